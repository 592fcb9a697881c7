"""Joint training across processes: resume after kill -9, two-process torchrun (DDP) with the ranks in sync,
FSDP2 on gloo against the unsharded update, an FSDP run that resumes and ends where the DDP run ends."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _faults import kill_9, wait_until
from _training_common import (
    fsdp_update_vs_unsharded,
    open_world,
    tiny_model,
    tiny_train_config,
    training_process,
    world_data,
)
from safetensors.torch import load_file

from segcompass.training import load_model, train_joint

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return world_data(tmp_path_factory.mktemp("world"))


@pytest.mark.slow
def test_kill_9_then_resume_ends_where_an_uninterrupted_run_ends(data: Path, tmp_path: Path) -> None:
    steps = 4
    straight = training_process(data, tmp_path / "straight", steps, stderr=subprocess.PIPE)
    assert straight.wait(timeout=600) == 0, straight.stderr.read().decode()[-2000:]

    victim = training_process(data, tmp_path / "killed", steps, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "step-00000002" / "state.json"
    assert wait_until(ckpt.exists, victim, 600, "step-2 checkpoint"), (
        "the run ended before it could be killed"
    )
    assert kill_9(victim)
    assert not (tmp_path / "killed" / "final").exists()

    resumed = train_joint(tiny_train_config(tmp_path / "killed", steps=steps, checkpoint_every=1), tiny_model(),
                          open_world(data, "train"), progress=False)  # fmt: skip
    assert resumed.resumed_from >= 2
    assert resumed.history["step"].tolist() == list(range(steps))
    a = load_file(tmp_path / "straight" / "final" / "head.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "head.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = load_file(next((tmp_path / "straight" / "final" / "backbone").glob("*.safetensors")))
    lb = load_file(next((tmp_path / "killed" / "final" / "backbone").glob("*.safetensors")))
    assert all(torch.equal(la[k], lb[k]) for k in la)


_DDP = """
import sys, torch, hashlib
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from pathlib import Path
import torch.distributed as dist
from _training_common import open_world, tiny_model, tiny_train_config
from segcompass.training import train_joint
model = tiny_model()
train_joint(tiny_train_config(Path({out!r}), steps=2, checkpoint_every=2), model, open_world(Path({data!r}), "train"),
            progress=False)
digest = hashlib.sha256()
for n, p in model.named_parameters():
    if p.requires_grad:
        digest.update(p.detach().numpy().tobytes())
Path({out!r}, f"rank{{dist.get_rank()}}.sha").write_text(digest.hexdigest())
"""


def _torchrun(script: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_torchrun_keeps_the_ranks_in_sync(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(_DDP.format(tests=str(TESTS), out=str(out), data=str(data)))
    _torchrun(script)
    r0, r1 = ((out / f"rank{r}.sha").read_text() for r in (0, 1))
    assert r0 == r1, "the two processes ended with different weights"
    init, trained = tiny_model(), load_model(out)
    assert not torch.equal(next(trained.head.codebook.parameters()), next(init.head.codebook.parameters()))
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_fsdp2_update_on_one_gloo_rank_matches_the_unsharded_one(data: Path, tmp_path: Path) -> None:
    # teacher-forced, so the LLM's gradient is not zero (a random policy's sampled groups often tie)
    weights, expected, sampled_loss = fsdp_update_vs_unsharded(data, tmp_path, "cpu", "gloo")
    assert math.isfinite(sampled_loss)
    assert weights.keys() == expected.keys()
    start = dict(tiny_model().named_parameters())
    assert any(not torch.equal(v, start[n].detach()) for n, v in expected.items() if n.startswith("llm."))
    ema_names = [n for n in expected if n.startswith("ema/")]
    assert ema_names and all(n in weights for n in ema_names)
    for name in ema_names:  # the head's EMA, sharded: ½ start + ½ update
        plain = name.removeprefix("ema/")
        torch.testing.assert_close(expected[name], 0.5 * start[plain].detach() + 0.5 * expected[plain])
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-7, msg=name)


_FSDP = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from pathlib import Path
from _training_common import open_world, tiny_model, tiny_train_config
from segcompass.training import train_joint
cfg = tiny_train_config(Path({out!r}), steps={steps}, checkpoint_every=1, parallel={parallel!r})
train_joint(cfg, tiny_model(), open_world(Path({data!r}), "train"), progress=False)
"""


@pytest.mark.slow
def test_fsdp_run_resumes_and_ends_where_the_ddp_run_ends(data: Path, tmp_path: Path) -> None:
    runs = {}
    for name, parallel, steps in (("ddp", "ddp", 2), ("fsdp", "fsdp", 1), ("fsdp", "fsdp", 2)):
        out = tmp_path / name
        script = tmp_path / f"{name}-{steps}.py"
        script.write_text(
            _FSDP.format(tests=str(TESTS), out=str(out), data=str(data), steps=steps, parallel=parallel)
        )
        _torchrun(script)  # the second fsdp launch resumes from the first one's step-1 checkpoint
        runs[name] = out
    rows = (runs["fsdp"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1]
    ddp, fsdp = load_model(runs["ddp"] / "final"), load_model(runs["fsdp"] / "final")
    init = tiny_model()
    a, b, c = dict(ddp.named_parameters()), dict(fsdp.named_parameters()), dict(init.named_parameters())
    assert not torch.equal(a["head.slot_mapper.query.weight"], c["head.slot_mapper.query.weight"])
    for name, p in a.items():
        assert torch.allclose(p, b[name], atol=1e-5), (
            f"{name}: FSDP and DDP runs differ by {float((p - b[name]).abs().max())}"
        )
