"""The head's supervised warm start (`segcompass.training.head_warmup`): what trains, the schedule, the EMA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _training_common import open_world, tiny_model, world_data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return world_data(tmp_path_factory.mktemp("world"))


def test_head_warm_start_trains_the_head_only(data: Path) -> None:
    from segcompass.training import HeadWarmupConfig, warm_start_head

    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = warm_start_head(model, open_world(data, "train"), HeadWarmupConfig(steps=3, batch_size=2, samples=4),
                           progress=False)  # fmt: skip
    assert list(hist["step"]) == [0, 1, 2] and hist["loss"].notna().all()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved and all(n.startswith("head.") for n in moved), sorted(moved)[:5]
    assert not any(n.startswith(("head.concepts.", "head.image_encoder.")) for n in moved)
    assert any(n.startswith("head.slot_mapper.") for n in moved)
    with pytest.raises(ValueError, match="steps >= 0"):
        HeadWarmupConfig(steps=-1)


def test_head_warm_start_schedule_and_ema(data: Path) -> None:
    from segcompass.training import HeadWarmupConfig, warm_start_head

    cos = HeadWarmupConfig(steps=4)
    assert [cos.lr_factor(t) for t in range(5)] == pytest.approx(
        [1.0, 0.853553, 0.5, 0.146447, 0.0], abs=1e-6
    )
    assert HeadWarmupConfig(steps=4, schedule="constant").lr_factor(3) == 1.0
    # one step: the EMA's first decay is min(0.995, 1/10) = 0.1, so the head ends at 0.1·init + 0.9·w1,
    # w1 = the weights after the same step without the EMA
    base = dict(steps=1, batch_size=2, samples=2, schedule="constant")
    init = tiny_model()
    start = {n: p.detach().clone() for n, p in init.head.named_parameters() if p.requires_grad}
    plain, averaged = tiny_model(), tiny_model()
    for m in (plain, averaged):
        m.load_state_dict(init.state_dict())
    warm_start_head(plain, open_world(data, "train"), HeadWarmupConfig(**base, ema_decay=0.0), progress=False)
    warm_start_head(
        averaged, open_world(data, "train"), HeadWarmupConfig(**base, ema_decay=0.995), progress=False
    )
    w1 = dict(plain.head.named_parameters())
    moved = 0
    for n, p in averaged.head.named_parameters():
        if n in start:
            torch.testing.assert_close(
                p.detach(), 0.1 * start[n] + 0.9 * w1[n].detach(), rtol=1e-5, atol=1e-6
            )
            moved += not torch.equal(start[n], w1[n].detach())
    assert moved > 0
    with pytest.raises(ValueError, match="ema_decay"):
        HeadWarmupConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="schedule"):
        HeadWarmupConfig(schedule="step")  # type: ignore[arg-type]


def test_an_interrupted_warm_start_continues_to_the_same_head_and_average(data: Path, tmp_path: Path) -> None:
    from segcompass.loop_checkpoints import checkpointing
    from segcompass.training import HeadWarmupConfig, warm_start_head

    cfg = HeadWarmupConfig(steps=4, batch_size=2, samples=4, ema_decay=0.9)
    reference = tiny_model()
    expected = warm_start_head(reference, open_world(data, "train"), cfg, progress=False)

    model = tiny_model()
    forward = model.head.forward

    def stopped_at_step_2(*args, **kwargs):
        if kwargs.get("step") == 2:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    model.head.forward = stopped_at_step_2
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path):
        warm_start_head(model, open_world(data, "train"), cfg, progress=False)
    assert (tmp_path / "loops" / "checkpoints" / "loop0-step-0000002" / "state.json").is_file()
    resumed = tiny_model()
    with checkpointing(tmp_path):
        history = warm_start_head(resumed, open_world(data, "train"), cfg, progress=False)
    assert history.to_dict("records") == expected.to_dict("records")
    want = reference.head.state_dict()
    assert all(
        torch.equal(v, want[k]) for k, v in resumed.head.state_dict().items()
    )  # the EMA was restored too
