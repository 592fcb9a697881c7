"""Multi-query associative recall (MQAR) on the staged stack's tiny language model: does it learn recall at all?

Each sequence lists `--pairs` key–value token pairs (keys drawn without repeats from 64 tokens, values with
repeats from 64 others), then asks `--queries` of its keys again; the loss and the accuracy are on the value
after each repeated key (k₁ v₁ … k_N v_N · k_q → v_q). It is the textbook task for the induction-style head
that in-context look-ups need; a model that only learned which tokens are values scores 1 / pairs (the last
query also by elimination when every key is asked). `--arch gpt2` / `qwen2` run a Hugging Face GPT-2 / Qwen2
of the same size instead, to tell the task from our configuration.

    python scripts/mqar_probe.py --pairs 4 --queries 2 --steps 1500 --theta 10000

Measured in results/warmup.md, session of 2026-12-06 (4).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from segcompass.backbones import build_tiny
from segcompass.pretrain.config import StackConfig

KEYS, VALUES = np.arange(100, 164), np.arange(200, 264)
"""Token ids used as keys and as values (inside the tiny tokenizer's 742)."""


def build_model(arch: str, theta: float, layers: int) -> torch.nn.Module:
    spec = dataclasses.replace(StackConfig().tiny_spec(), rope_theta=theta, num_layers=layers)
    if arch == "qwen2_5_vl":
        return build_tiny("qwen2_5_vl", seed=0, spec=spec).model
    torch.manual_seed(0)
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(
            GPT2Config(vocab_size=742, n_positions=256, n_embd=128, n_layer=layers, n_head=4)
        )
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=742,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        rope_theta=theta,
        max_position_embeddings=512,
    )
    return Qwen2ForCausalLM(config)


def mqar_batch(
    rng: np.random.Generator, n: int, pairs: int, queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """input ids [n, 2·(pairs + queries)] and labels (−100 except the queried values)."""
    inputs, labels = [], []
    for _ in range(n):
        keys, values = rng.choice(KEYS, pairs, replace=False), rng.choice(VALUES, pairs)
        sequence = [int(x) for pair in zip(keys, values, strict=True) for x in pair]
        label = [-100] * len(sequence)
        for q in rng.choice(pairs, queries, replace=False):
            sequence += [int(keys[q]), int(values[q])]
            label += [-100, int(values[q])]
        inputs.append(sequence)
        labels.append(label)
    return torch.tensor(inputs), torch.tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak lr (50 warm-up steps, cosine to 5 %%)")
    parser.add_argument("--theta", type=float, default=20.0, help="rotary base")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--arch", default="qwen2_5_vl", choices=["qwen2_5_vl", "gpt2", "qwen2"])
    parser.add_argument("--every", type=int, default=50, help="accuracy on 256 fresh sequences every N steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.arch, args.theta, args.layers).train()
    rng = np.random.default_rng(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start = time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                model.eval()
                inputs, labels = mqar_batch(rng, 256, args.pairs, args.queries)
                predicted, target = model(input_ids=inputs).logits[:, :-1].argmax(-1), labels[:, 1:]
                accuracy = float((predicted[target != -100] == target[target != -100]).float().mean())
                model.train()
            print(
                json.dumps({"step": step, "s": round(time.time() - start), "acc": round(accuracy, 3)}),
                flush=True,
            )
        if step == args.steps:
            break
        inputs, labels = mqar_batch(rng, args.batch, args.pairs, args.queries)
        logits = model(input_ids=inputs).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()


if __name__ == "__main__":
    main()
