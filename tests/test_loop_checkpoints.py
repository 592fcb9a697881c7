"""Training loops inside a stage's build checkpoint and resume: an interrupted loop run again ends with the
same weights, losses and batches as an uninterrupted one; a finished loop is skipped; a checkpoint of another
loop is refused; outside a build nothing is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from sae.files import CorruptFileError
from segcompass.loop_checkpoints import checkpointing
from segcompass.pretrain.optim import Schedule, run_loop

SCHEDULE = Schedule(steps=8, batch_size=4, lr=1e-2)
DATA = torch.randn(32, 6, generator=torch.Generator().manual_seed(3))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 1))  # dropout: the torch RNG matters


def _step_loss(model: nn.Module, seen: list[list[int]], fail_at: int | None = None, error=KeyboardInterrupt):
    def step_loss(step: int, rng: np.random.Generator):
        picks = rng.choice(len(DATA), size=SCHEDULE.batch_size, replace=False)  # the draw happens first
        if step == fail_at:
            raise error("stop")
        seen.append([int(i) for i in picks])
        loss = model(DATA[picks]).pow(2).mean()
        return loss, {"mse": float(loss.detach())}

    return step_loss


def _run(model, seen, fail_at=None, error=KeyboardInterrupt, desc="toy"):
    return run_loop(
        [model], SCHEDULE, _step_loss(model, seen, fail_at, error), seed=5, desc=desc, progress=False
    )


def _reference():
    model, seen = _model(), []
    record = _run(model, seen)
    return model, seen, record


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_an_interrupted_loop_resumes_to_the_same_weights_losses_and_batches(tmp_path):
    ref_model, ref_seen, ref_record = _reference()
    seen: list[list[int]] = []
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, every_s=1e9):
        _run(_model(), seen, fail_at=3)  # the draw of step 3 happened: the checkpoint must not keep it
    assert (tmp_path / "loops" / "checkpoints" / "loop0-step-0000003" / "state.json").is_file()
    torch.manual_seed(123)  # a new process: the global RNG is wherever it is
    model = _model()
    with checkpointing(tmp_path, every_s=1e9):
        record = _run(model, seen)
    assert seen == ref_seen
    assert record.losses == ref_record.losses and record.parts == ref_record.parts
    assert _same_weights(model, ref_model)
    assert not (tmp_path / "loops").exists()  # the build is complete: its checkpoints are gone


def test_a_crash_resumes_from_the_last_periodic_checkpoint(tmp_path):
    ref_model, ref_seen, ref_record = _reference()
    with pytest.raises(RuntimeError), checkpointing(tmp_path, every_s=0.0):  # every step
        _run(_model(), [], fail_at=5, error=RuntimeError)  # not an interrupt: nothing saved at the failure
    kept = sorted(p.name for p in (tmp_path / "loops" / "checkpoints").iterdir())
    assert kept == ["loop0-step-0000005"]  # only the newest is kept
    seen: list[list[int]] = []
    model = _model()
    with checkpointing(tmp_path, every_s=0.0):
        record = _run(model, seen)
    assert seen == ref_seen[5:]
    assert record.losses == ref_record.losses
    assert _same_weights(model, ref_model)


def test_a_finished_loop_is_restored_without_a_step_and_the_next_one_continues(tmp_path):
    first_ref = _model()
    _run(first_ref, [])
    torch.manual_seed(1)
    second_ref = nn.Linear(6, 1)
    _run(second_ref, [], desc="second")
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, every_s=1e9):
        _run(_model(), [])
        torch.manual_seed(1)
        _run(nn.Linear(6, 1), [], fail_at=2, desc="second")
    first, first_seen, second_seen = _model(), [], []
    with checkpointing(tmp_path, every_s=1e9):
        record = _run(first, first_seen)
        torch.manual_seed(1)
        second = nn.Linear(6, 1)
        _run(second, second_seen, desc="second")
    assert first_seen == [] and len(record.losses) == SCHEDULE.steps  # restored, not trained again
    assert len(second_seen) == SCHEDULE.steps - 2
    assert _same_weights(first, first_ref) and _same_weights(second, second_ref)


def test_a_checkpoint_of_another_loop_is_refused_with_both_settings_named(tmp_path):
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, every_s=1e9):
        _run(_model(), [], fail_at=2)
    with (
        pytest.raises(ValueError, match=r"other settings \(schedule\.steps: 8 -> 9\); delete"),
        checkpointing(tmp_path),
    ):
        run_loop(
            [_model()], Schedule(steps=9, batch_size=4, lr=1e-2), _step_loss(_model(), []), 5, "toy", False
        )
    state = json.loads((tmp_path / "loops" / "checkpoints" / "loop0-step-0000002" / "state.json").read_text())
    assert state["settings"]["schedule"]["steps"] == SCHEDULE.steps  # what was written is kept


def test_outside_a_build_a_loop_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _run(_model(), [], fail_at=2)
    assert list(tmp_path.iterdir()) == []


def _tied() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 1))
    model[1].weight = model[0].weight  # tied, as a language model's embedding and head can be
    return model


def test_tied_weights_are_checkpointed_and_stay_tied(tmp_path):
    reference = _tied()
    _run(reference, [])
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, every_s=1e9):
        _run(_tied(), [], fail_at=4)
    model = _tied()
    with checkpointing(tmp_path, every_s=1e9):
        _run(model, [])
    assert model[1].weight is model[0].weight
    assert _same_weights(model, reference)


def test_an_unreadable_checkpoint_is_a_clear_error_that_says_what_to_delete(tmp_path):
    with pytest.raises(KeyboardInterrupt), checkpointing(tmp_path, every_s=1e9):
        _run(_model(), [], fail_at=2)
    weights = tmp_path / "loops" / "checkpoints" / "loop0-step-0000002" / "modules.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    unreadable = r"loop0-step-0000002 cannot be read .*delete .*loops"
    with pytest.raises(CorruptFileError, match=unreadable), checkpointing(tmp_path):
        _run(_model(), [])
    assert weights.is_file()  # nothing is deleted behind the user's back
