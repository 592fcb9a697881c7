"""One joint training step: time per phase, and the step ÷ its unavoidable parts (CPU or GPU).

    python bench/bench_joint.py                       # random tiny Qwen2.5-VL, random SAE, 4 prompts × G 4
    python bench/bench_joint.py --backbone warm:qwen2_5_vl --sae runs/ablation/sae/<…>
    python bench/bench_joint.py --device cuda --size 7b --dtype bfloat16 --head paper --d-sae 65536 \
        --lora-rank 16 --grad-ckpt --group 8 --max-new-tokens 128   # Qwen2.5-VL-7B shapes on one GPU

The unavoidable parts, each timed alone on the same inputs: one batched generate (the rollouts), one
no-grad reference forward, one policy forward + backward over prompt + response (log-probs and states),
one head forward + backward on those states. The step (`segcompass.training.joint_step`, which also scores
the rewards, builds the advantages and the loss, clips and steps AdamW) should cost at most 1.3× their sum.
Peak = largest growth of malloc'd bytes during the step (glibc mallinfo2, sampled every ms), or of allocated
GPU memory on CUDA. Medians over `--repeats` round-robin runs, so load from other processes hits every
variant alike.

`--size 7b` builds a random-weight Qwen2.5-VL at the published 7B shapes (text: 28 blocks of width 3584,
28 heads / 4 KV heads, MLP 18944, hook layer 13; vision: 32 blocks of width 1280, 16 heads, MLP 3420) with
the tiny offline tokenizer (so its vocabulary is the tokenizer's, not 152k), directly on `--device` in
`--dtype`: the memory and time of the real architecture without downloading it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_head import measure

from segcompass.backbones import build_tiny, resolve_backbone
from segcompass.backbones.family import TinySpec
from segcompass.evaluation.datasets import open_dataset
from segcompass.head import HeadConfig, build_head, build_optimizer
from segcompass.model import SegCompassModel, cpu_head_config
from segcompass.model.lora import LoraSettings
from segcompass.policy import PolicyConfig, generate_rollouts, policy_forward, reference_logprobs
from segcompass.training import JointTrainConfig, joint_step, setup_trainable
from segcompass.training.batches import SampleSource
from segcompass.training.loop import build_reference
from segcompass.world import WorldConfig, write_refcoco_style

QWEN25_VL_7B = TinySpec(
    hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944,
    vision_hidden_size=1280, vision_layers=32, image_size=448, rope_theta=1e6, hook_layer=13,
    extra={"vision_config": {"num_heads": 16, "intermediate_size": 3420, "window_size": 112,
                             "fullatt_block_indexes": [7, 15, 23, 31]},
           "text_config": {"max_position_embeddings": 32768}},
)  # fmt: skip
"""Qwen2.5-VL-7B-Instruct's published shapes (the hook layer is the paper's)."""


def _backbone(args: argparse.Namespace):
    dtype = getattr(torch, args.dtype)
    if args.size == "7b":
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(args.device):  # build on the device: no 30 GB fp32 copy on the host
                backbone = build_tiny("qwen2_5_vl", spec=QWEN25_VL_7B)
            backbone.model.to(dtype)
            return backbone
        finally:
            torch.set_default_dtype(default)
    backbone = resolve_backbone(args.backbone)
    backbone.model.to(device=args.device, dtype=dtype)
    return backbone


def build(args: argparse.Namespace) -> tuple[SegCompassModel, JointTrainConfig, list]:
    backbone = _backbone(args)
    if args.sae:
        from sae.saved import load_sae

        sae, _ = load_sae(args.sae)
    else:
        from sae_lens import StandardSAE, StandardSAEConfig

        torch.manual_seed(0)
        with torch.device(args.device):
            sae = StandardSAE(
                StandardSAEConfig(d_in=backbone.hidden_size, d_sae=args.d_sae, apply_b_dec_to_input=False)
            )
        torch.nn.init.normal_(sae.b_enc, 0.0, 0.5)
    policy = PolicyConfig(max_new_tokens=args.max_new_tokens)  # K: the policy's (the head takes it)
    if args.head == "paper":  # docs/design.md §4: SAM ViT-H geometry (1024² → 64² grid → 256² masks), d_c 512
        paper = HeadConfig.paper(backbone.hidden_size, num_slots=policy.num_slots, d_sae=sae.cfg.d_sae)
        head_cfg = dataclasses.replace(paper, loss=dataclasses.replace(paper.loss, too_many_targets="drop"))
    else:
        head_cfg = cpu_head_config(backbone.hidden_size, sae.cfg.d_sae, policy.num_slots)
    with torch.device(args.device):
        head = build_head(head_cfg, sae, image_encoder=True)
    model = SegCompassModel(backbone, head, policy).to(args.device)
    cfg = JointTrainConfig(
        out="/tmp/unused", prompts_per_step=args.prompts, group_size=args.group, lr=1e-5, policy=policy,
        lora=LoraSettings(lora_rank=args.lora_rank), gradient_checkpointing=args.grad_ckpt,
    )  # fmt: skip
    root = Path(args.data)
    if not (root / "instances.json").exists():
        write_refcoco_style(root, WorldConfig(), {"train": 16})
    source = SampleSource(open_dataset("grefcoco", root, "train"), head)
    return model, cfg, source.get(list(range(args.prompts)))


@torch.no_grad()
def calibrate_random_sae(model: SegCompassModel, rollouts, policy: PolicyConfig, active: int) -> float:
    """Set a random SAE's encoder bias so that each atom reaches the head's threshold on its top
    `active` / d_sae fraction of the concept tokens (≈ `active` atoms per token, as a trained SAE has; a
    random bias makes half of them fire and times a support no trained SAE produces). Returns the mean
    number of atoms per token that pass the threshold afterwards."""
    sae, tau = model.head.concepts.sae, model.head.cfg.tau
    st = policy_forward(model.backbone, rollouts, policy)
    tokens = st.hook_states[st.concept_token_mask].float()  # [T, D]
    sample = tokens[torch.randperm(tokens.shape[0], device=tokens.device)[:2048]]
    pre = sample @ sae.W_enc.float()  # [n, d_sae] without the bias
    k = max(1, sample.shape[0] - max(1, round(sample.shape[0] * active / sae.cfg.d_sae)))
    threshold = pre.kthvalue(k, dim=0).values  # [d_sae]
    sae.b_enc.copy_((tau - threshold).to(sae.b_enc.dtype))
    return float(((tokens @ sae.W_enc.float() + sae.b_enc.float()) >= tau).sum(1).float().mean())


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
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the LLM's dtype")
    p.add_argument("--size", default="tiny", choices=["tiny", "7b"], help="7b: random Qwen2.5-VL-7B shapes")
    p.add_argument("--head", default="cpu", choices=["cpu", "paper"], help="head preset (paper: SAM ViT-H)")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA on the post-hook blocks (0: full weights)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in the LLM")
    p.add_argument("--active-atoms", type=int, default=0,
                   help="calibrate the random SAE to about this many atoms per token (0: N(0, 0.5) bias)")  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    model, cfg, batch = build(args)
    groups = setup_trainable(model, cfg)
    trainable = [q for g in groups for q in g["params"]]
    optimizer = build_optimizer(groups)
    reference = build_reference(model, cfg)
    if cfg.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    g = cfg.group_size
    images, texts = [s.image for s in batch], [s.text for s in batch]
    emb = torch.stack([s.embedding for s in batch]).repeat_interleave(g, 0)
    targets = [s.targets for s in batch for _ in range(g)]
    torch.manual_seed(0)
    fixed = generate_rollouts(model.backbone, images, texts, cfg.policy, group_size=g)
    atoms = calibrate_random_sae(model, fixed, cfg.policy, args.active_atoms) if args.active_atoms else None

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
        out = model.head(st.hook_states.float(), st.concept_token_mask, st.concentration_states.float(),
                         emb.to(args.device).float(), targets)  # fmt: skip
        out.losses.total.backward()
        model.zero_grad(set_to_none=True)

    def step() -> None:
        torch.manual_seed(0)
        res = joint_step(model, model, reference, optimizer, batch, cfg, 0, trainable)
        step.timings = res.timings  # type: ignore[attr-defined]

    parts = measure([rollout, reference_forward, policy_fwd_bwd, head_step, step], args.repeats, cuda=cuda)
    names = [
        "generate (rollouts)",
        "reference forward",
        "policy forward + backward",
        "head forward + backward",
        "joint step",
    ]
    n = args.prompts * args.group
    counts = {"trainable": 0, "frozen": 0}
    for q in model.parameters():
        counts["trainable" if q.requires_grad else "frozen"] += q.numel()
    print(
        f"backbone {args.backbone if args.size == 'tiny' else 'Qwen2.5-VL-7B shapes (random)'} "
        f"({args.dtype}, {args.device}{', LoRA r' + str(args.lora_rank) if args.lora_rank else ''}"
        f"{', grad ckpt' if args.grad_ckpt else ''}), head {args.head}, d_sae {model.head.cfg.d_sae}; "
        f"{args.prompts} prompts × G {args.group} = {n} responses, prompt length {fixed.prompt_length}, "
        f"response length {fixed.response_ids.shape[1]}; parameters trainable {counts['trainable'] / 1e6:.1f} M, "
        f"frozen {counts['frozen'] / 1e6:.1f} M; threads {args.threads}"
        + (f"; random SAE calibrated to {atoms:.0f} atoms / token" if atoms is not None else "")
    )
    if cuda:
        print(f"  GPU {torch.cuda.get_device_name()}, peak allocated over the run "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (weights + optimiser state + the largest part)")  # fmt: skip
    for name, m in zip(names, parts, strict=True):
        print(f"  {name:28s} {m.seconds * 1000:8.1f} ms   peak +{m.peak_mib:7.1f} MiB")
    unavoidable = sum(m.seconds for m in parts[:4])
    print(f"  sum of unavoidable parts     {unavoidable * 1000:8.1f} ms")
    print("  step phases (last run): " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in step.timings.items()))
    print(f"joint step ÷ unavoidable parts = {parts[4].seconds / unavoidable:.2f}  (target ≤ 1.3)")


if __name__ == "__main__":
    main()
