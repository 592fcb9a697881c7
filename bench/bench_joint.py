"""One joint training step on the tiny backbone: time per phase, and the step ÷ its unavoidable parts.

    python bench/bench_joint.py                       # random tiny Qwen2.5-VL, random SAE, 4 prompts × G 4
    python bench/bench_joint.py --backbone warm:qwen2_5_vl --sae runs/ablation/sae/<…>

The unavoidable parts, each timed alone on the same inputs: one batched generate (the rollouts), one
no-grad reference forward, one policy forward + backward over prompt + response (log-probs and states),
one head forward + backward on those states. The step (`segcompass.training.joint_step`, which also scores
the rewards, builds the advantages and the loss, clips and steps AdamW) should cost at most 1.3× their sum.
Peak = largest growth of malloc'd bytes during the step (glibc mallinfo2, sampled every ms). Medians over
`--repeats` round-robin runs, so load from other processes hits every variant alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_head import measure

from segcompass.backbones import resolve_backbone
from segcompass.evaluation.datasets import open_dataset
from segcompass.head import build_head
from segcompass.policy import PolicyConfig, generate_rollouts, policy_forward, reference_logprobs
from segcompass.training import JointTrainConfig, SegCompassModel, joint_step, setup_trainable
from segcompass.training.batches import SampleSource
from segcompass.training.loop import build_reference
from segcompass.training.recipe import cpu_head_config
from segcompass.world import WorldConfig, write_refcoco_style


def build(args: argparse.Namespace) -> tuple[SegCompassModel, JointTrainConfig, list]:
    backbone = resolve_backbone(args.backbone)
    if args.sae:
        from sae.training.metadata import load_sae

        sae, _ = load_sae(args.sae)
    else:
        from sae_lens import StandardSAE, StandardSAEConfig

        torch.manual_seed(0)
        sae = StandardSAE(
            StandardSAEConfig(d_in=backbone.hidden_size, d_sae=args.d_sae, apply_b_dec_to_input=False)
        )
        torch.nn.init.normal_(sae.b_enc, 0.0, 0.5)
    head = build_head(cpu_head_config(backbone.hidden_size, sae.cfg.d_sae), sae, image_encoder=True)
    policy = PolicyConfig(max_new_tokens=args.max_new_tokens)
    model = SegCompassModel(backbone, head, policy)
    cfg = JointTrainConfig(
        out="/tmp/unused", prompts_per_step=args.prompts, group_size=args.group, lr=1e-5, policy=policy
    )
    root = Path(args.data)
    if not (root / "instances.json").exists():
        write_refcoco_style(root, WorldConfig(), {"train": 16})
    source = SampleSource(open_dataset("grefcoco", root, "train"), head)
    return model, cfg, source.get(list(range(args.prompts)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny:qwen2_5_vl")
    p.add_argument("--sae", default="", help="trained SAE folder (default: a random SAE of --d-sae atoms)")
    p.add_argument("--d-sae", type=int, default=2048)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default="/tmp/segcompass-bench-joint-world")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg, batch = build(args)
    groups = setup_trainable(model, cfg)
    trainable = [q for g in groups for q in g["params"]]
    optimizer = torch.optim.AdamW(groups)
    reference = build_reference(model, cfg)
    g = cfg.group_size
    images, texts = [s.image for s in batch], [s.text for s in batch]
    emb = torch.stack([s.embedding for s in batch]).repeat_interleave(g, 0)
    targets = [s.targets for s in batch for _ in range(g)]
    torch.manual_seed(0)
    fixed = generate_rollouts(model.backbone, images, texts, cfg.policy, group_size=g)

    def rollout() -> None:
        torch.manual_seed(0)  # the same responses as the step's, so every part sees the same lengths
        generate_rollouts(model.backbone, images, texts, cfg.policy, group_size=g)

    def reference_forward() -> None:
        reference_logprobs(reference, fixed)

    def policy_fwd_bwd() -> None:
        st = policy_forward(model.backbone, fixed, cfg.policy)
        (st.logp.sum() + st.concentration_states.sum()).backward()
        model.zero_grad(set_to_none=True)

    with torch.no_grad():
        st = policy_forward(model.backbone, fixed, cfg.policy)

    def head_step() -> None:
        out = model.head(st.hook_states, st.concept_token_mask, st.concentration_states, emb.float(), targets)
        out.losses.total.backward()
        model.zero_grad(set_to_none=True)

    def step() -> None:
        torch.manual_seed(0)
        res = joint_step(model, model, reference, optimizer, batch, cfg, 0, trainable)
        step.timings = res.timings  # type: ignore[attr-defined]

    parts = measure([rollout, reference_forward, policy_fwd_bwd, head_step, step], args.repeats)
    names = [
        "generate (rollouts)",
        "reference forward",
        "policy forward + backward",
        "head forward + backward",
        "joint step",
    ]
    n = args.prompts * args.group
    print(
        f"backbone {args.backbone}, {args.prompts} prompts × G {args.group} = {n} responses, "
        f"response length {fixed.response_ids.shape[1]}, threads {args.threads}"
    )
    for name, m in zip(names, parts, strict=True):
        print(f"  {name:28s} {m.seconds * 1000:8.1f} ms   peak +{m.peak_mib:7.1f} MiB")
    unavoidable = sum(m.seconds for m in parts[:4])
    print(f"  sum of unavoidable parts     {unavoidable * 1000:8.1f} ms")
    print("  step phases (last run): " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in step.timings.items()))
    print(f"joint step ÷ unavoidable parts = {parts[4].seconds / unavoidable:.2f}  (target ≤ 1.3)")


if __name__ == "__main__":
    main()
