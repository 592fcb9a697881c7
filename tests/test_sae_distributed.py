"""torchrun with 2 CPU processes (gloo, torch DDP) trains the same SAE as one process on the same batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _sae_common import make_store, sparse_dictionary
from safetensors.torch import load_file

from sae.training import TrainConfig, train_sae

ROOT = Path(__file__).resolve().parents[1]

RUN = {
    "d_sae": 128,
    "l1_coefficient": 1.0,
    "lr": 3e-3,
    "batch_size": 256,
    "epochs": 2,
    "data_slices": 2,
    "num_threads": 1,
    "progress": False,
    "device": "cpu",
}


@pytest.mark.slow
def test_two_process_torchrun_matches_single_process(tmp_path):
    """Both runs see the same global batches (2 data slices: one per rank, or both in one process) and
    start from the same initialisation (DDP broadcasts rank 0's). They differ only in floating-point
    summation order — DDP averages the two half-batch gradients, one process takes the mean over the whole
    batch — so the weights agree to rounding, amplified a little by Adam over the steps."""
    x, _ = sparse_dictionary(8192, seed=7)
    store = make_store(tmp_path / "acts", x, shard_tokens=1024)
    single = train_sae(TrainConfig(store=str(store.root), out=str(tmp_path / "one"), **RUN))

    flags = []
    for k, v in {**RUN, "store": store.root, "out": tmp_path / "two"}.items():
        flags += [f"--{k.replace('_', '-')}", str(v).lower() if isinstance(v, bool) else str(v)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "sae.cli", "train", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    meta = json.loads((tmp_path / "two" / "segcompass_sae.json").read_text())
    assert meta["world_size"] == 2 and meta["train_steps"] == single.steps
    assert meta["fingerprint"] == single.metadata["fingerprint"]
    two = load_file(tmp_path / "two" / "sae_weights.safetensors")
    one = load_file(tmp_path / "one" / "sae_weights.safetensors")
    for name in one:
        scale = one[name].abs().max().clamp_min(1e-6)
        diff = (one[name] - two[name]).abs().max() / scale
        print(f"{name}: max relative difference {diff:.2e}")
        assert diff < 1e-4, f"{name}: relative difference {diff:.2e}"
    a, b = single.metadata["validation"][0], meta["validation"][0]
    assert abs(a["explained_variance"] - b["explained_variance"]) < 1e-3
    assert abs(a["l0"] - b["l0"]) < 0.05
    assert not torch.equal(one["W_dec"], torch.zeros_like(one["W_dec"]))
