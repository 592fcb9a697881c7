"""The independent checker agrees with the generator, and would catch a generator bug."""

from __future__ import annotations

from collections import Counter

import pytest

from segcompass.world import CheckerError, WorldConfig, check_targets, generate_sample, generate_split
from segcompass.world import query as query_module
from segcompass.world.scene import Scene, SceneObject


def test_checker_agrees_with_generator_on_many_samples() -> None:
    kinds: Counter[str] = Counter()
    for s in generate_split(WorldConfig(), "test", 300):
        answer = check_targets(s.instruction, s.scene)
        assert answer == s.target_ids, (s.sample_id, s.kind, s.instruction, s.target_ids, answer)
        kinds[s.kind] += 1
    assert set(kinds) == {"plain", "attribute", "relational", "multi", "no_target"}


def test_checker_catches_a_flipped_relation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the generator's "left of" / "right of" and the checker must disagree somewhere."""
    original = query_module._side_offset

    def flipped(relation: str, obj: SceneObject, anchor: SceneObject) -> float:
        swap = {"left of": "right of", "right of": "left of"}
        return original(swap.get(relation, relation), obj, anchor)

    monkeypatch.setattr(query_module, "_side_offset", flipped)
    cfg = WorldConfig(kind_weights={"relational": 1.0, "multi": 1.0})
    mismatches = 0
    for i in range(60):
        s = generate_sample(cfg, "train", i)
        mismatches += check_targets(s.instruction, s.scene) != s.target_ids
    assert mismatches > 0


def _obj(i: int, shape: str, colour: str, size: str, cx: float, cy: float) -> SceneObject:
    return SceneObject(i, shape, colour, size, cx, cy, 20.0, 20.0, 1000.0, i, (0, 0, 0))


SCENE = Scene(
    200,
    200,
    [
        _obj(0, "circle", "red", "small", 30, 100),
        _obj(1, "square", "red", "large", 170, 40),
        _obj(2, "triangle", "blue", "medium", 100, 160),
        _obj(3, "circle", "blue", "large", 120, 30),
    ],
    "test",
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("the red circle", [0]),
        ("Segment every blue shape.", [2, 3]),
        ("all the circles", [0, 3]),
        ("Where is the largest red shape?", [1]),
        ("the shape with the same colour as the triangle", [3]),
        ("the shape of the same kind as the blue circle", [0]),
        ("the shape to the left of the triangle", [0]),
        ("the shape below the blue circle, nearest the left edge", [0]),
        ("the topmost red shape", [1]),
        ("the shape closest to the square", [3]),
        ("the purple star", []),
        ("every hexagon", []),
        ("the large shapes", [1, 3]),  # singular determiner but several fits: returned, not resolved
    ],
)
def test_checker_on_a_hand_made_scene(text: str, expected: list[int]) -> None:
    assert check_targets(text, SCENE) == expected


@pytest.mark.parametrize(
    "text", ["paint it red", "the red circle on the moon", "the shape left of the circle"]
)
def test_checker_rejects_bad_instructions(text: str) -> None:
    with pytest.raises(CheckerError):
        check_targets(text, SCENE)
