"""Builders shared by the policy and training tests (not a test module)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch
from _head_common import make_sae

from segcompass.backbones import Backbone, build_tiny
from segcompass.evaluation.datasets import open_dataset
from segcompass.head import HeadConfig, LossConfig, SamEncoderConfig, build_head
from segcompass.model import SegCompassModel
from segcompass.policy import PolicyConfig, rollouts_from_responses
from segcompass.training import JointTrainConfig
from segcompass.training.batches import SampleSource
from segcompass.world import WorldConfig, write_refcoco_style

K = 2
RESPONSE = "<think>the red one</think>" + "<REF_POS>" * K


def small_head_config(d_in: int, d_sae: int, **overrides: object) -> HeadConfig:
    """Tiny head at a reduced SAM geometry (256² input → 16² grid → 64² masks)."""
    enc = dataclasses.replace(SamEncoderConfig.tiny(), img_size=256)
    base = dict(num_slots=K, tau=0.05, sam_encoder=enc, heatmap_size=64,
                loss=LossConfig(switch_step=0, match_conf_weight=0.1, too_many_targets="drop"))  # fmt: skip
    return HeadConfig.tiny(d_in, d_sae, **{**base, **overrides})


def tiny_model(
    seed: int = 0, backbone: Backbone | None = None, sae_seed: int | None = None, **head_overrides: object
) -> SegCompassModel:
    """Random tiny Qwen2.5-VL + random SAE (128 atoms, from `sae_seed`, default `seed`) + tiny head with its
    own SAM image encoder."""
    bb = backbone or build_tiny("qwen2_5_vl", seed=seed)
    sae = make_sae(
        bb.hidden_size, 128, seed=seed if sae_seed is None else sae_seed, apply_b_dec_to_input=False
    )
    torch.manual_seed(seed)
    head = build_head(small_head_config(bb.hidden_size, 128, **head_overrides), sae, image_encoder=True)
    return SegCompassModel(bb, head, PolicyConfig(num_slots=K, max_new_tokens=12))


def world_data(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """A gRefCOCO-style synthetic-world data set (written once per root)."""
    if not (root / "instances.json").exists():
        write_refcoco_style(root, WorldConfig(), {"train": n_train, "val": n_val})
    return root


def open_world(root: Path, split: str):
    return open_dataset("grefcoco", root, split)


def tiny_train_config(out: Path, **overrides: object) -> JointTrainConfig:
    """2 prompts × G 2, short responses: a step takes about a second on one thread."""
    base = dict(out=str(out), steps=2, prompts_per_step=2, group_size=2, lr=1e-3, checkpoint_every=1,
                policy=PolicyConfig(num_slots=K, max_new_tokens=12))  # fmt: skip
    return JointTrainConfig(**{**base, **overrides})


_TRAIN_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from pathlib import Path
from _training_common import open_world, tiny_model, tiny_train_config
from segcompass.training import train_joint
cfg = tiny_train_config(Path({out!r}), steps={steps}, checkpoint_every=1)
train_joint(cfg, tiny_model(), open_world(Path({data!r}), "train"), progress=False)
"""


def training_process(data: Path, out: Path, steps: int, **popen: object) -> subprocess.Popen:
    """A joint training run (`tiny_model`, `tiny_train_config`, a checkpoint every step; resumes from `out`)
    in its own process, on one thread."""
    code = _TRAIN_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out), steps=steps, data=str(data))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[1], env=env, **popen)


def grad_sums(module: torch.nn.Module) -> dict[str, float]:
    """Sum of |grad| per parameter name (−1 where the parameter has no gradient)."""
    return {
        n: (float(p.grad.abs().sum()) if p.grad is not None else -1.0) for n, p in module.named_parameters()
    }


def teacher_forced(model: SegCompassModel, data: Path, n: int = 2):
    """Rollouts of the fixed `RESPONSE` (K concentration tokens) for the first n train samples, their SAM
    embeddings and targets."""
    samples = SampleSource(open_world(data, "train"), model.head).get(list(range(n)))
    ro = rollouts_from_responses(model.backbone, [s.image for s in samples], [s.text for s in samples],
                                 [RESPONSE] * n, model.policy)  # fmt: skip
    return ro, torch.stack([s.embedding for s in samples]), [s.targets for s in samples]


def forward_backward(model: SegCompassModel, data: Path):
    """One teacher-forced forward (train mode) and backward of log-prob sum + head losses."""
    model.train()
    ro, emb, targets = teacher_forced(model, data)
    out = model(ro, emb, targets)
    (out.states.logp.sum() + out.head.losses.total).backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return ro, out, grads


def fsdp_update_vs_unsharded(data: Path, tmp: Path, device: str, backend: str):
    """One SGD update on teacher-forced responses by the unsharded model and by the FSDP2-sharded one in a
    one-rank process group (+ one sampled joint step on the sharded model). Teacher forcing and SGD keep the
    comparison exact: sampled text may differ between two GPU runs, and AdamW's first step is ±lr wherever
    |g| ≫ eps (it flips with the last bits where it is not). Returns (sharded weights, unsharded weights,
    the sampled step's loss); the head's EMA (decay ½) after the update is included under ``ema/<name>``."""
    import torch.distributed as dist

    from segcompass.head import build_optimizer
    from segcompass.training import joint_step, setup_trainable
    from segcompass.training.ema import HeadEMA
    from segcompass.training.loop import build_reference
    from segcompass.training.sharding import gather_training_state, shard_model

    cfg = tiny_train_config(tmp / "unused", parallel="fsdp")

    def sgd_step(model) -> tuple[torch.optim.Optimizer, dict[str, torch.Tensor]]:
        optimizer = torch.optim.SGD(setup_trainable(model, cfg))
        ema = HeadEMA(model, 0.5)
        forward_backward(model, data)
        optimizer.step()
        ema.update()
        return optimizer, ema.state_dict()

    plain = tiny_model().to(device)
    _, expected_ema = sgd_step(plain)
    expected = {n: p.detach().cpu().clone() for n, p in plain.named_parameters() if p.requires_grad}
    del plain
    dist.init_process_group(backend, init_method=f"file://{tmp / 'pg'}", rank=0, world_size=1)
    try:
        model = tiny_model().to(device)
        setup_trainable(model, cfg)
        reference = build_reference(model, cfg)
        shard_model(model, reference)
        optimizer, ema = sgd_step(model)
        weights = {k: v.clone() for k, v in gather_training_state(model, optimizer)[0].items()}
        groups = setup_trainable(model, cfg)
        torch.manual_seed(0)
        batch = SampleSource(open_world(data, "train"), model.head).get([0, 1])
        result = joint_step(model, model, reference, build_optimizer(groups), batch, cfg, 0,
                            [p for g in groups for p in g["params"]])  # fmt: skip
    finally:
        dist.destroy_process_group()
    return (
        {**weights, **{f"ema/{k}": v for k, v in ema.items()}},
        {**expected, **{f"ema/{k}": v for k, v in expected_ema.items()}},
        result.loss,
    )
