"""Can the tiny language model learn in-context recall in text? (#19; results/warmup.md, 2026-12-06)

Sequences in the tiny Qwen2.5-VL chat format, no image: "Objects: red star, blue circle, …. What colour is
the star?" → "red", then more questions about the same list. 2–7 objects with distinct shapes, colours drawn
with repeats. Prints the held-out accuracy of the first answer every `--every` steps (answering a colour
from the list at random scores ≈ 0.35–0.45).

    python scripts/recall_probe.py --steps 1000 --rope-theta 10000
    # the recipe that formed the look-up twice (results/warmup.md, session (2)):
    python scripts/recall_probe.py --steps 1500 --batch-size 128 --questions 2 --objects 2 2 --every 100

Variations tried in session (3): --constant-lr, --space-answer, --prev-aux, --shape-first plain, --dense,
--hidden-size 256.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch

from segcompass.backbones import build_tiny, load_backbone
from segcompass.backbones.family import TinySpec
from segcompass.pretrain.language import next_token_loss
from segcompass.pretrain.optim import Schedule, run_loop
from segcompass.world.vocab import COLOURS, SHAPES

COLOUR_WORDS, SHAPE_WORDS = tuple(COLOURS), tuple(SHAPES)


OBJECTS = (2, 7)
"""Fewest and most objects in a list (set from --objects)."""
SHAPE_FIRST = ""
"""List items as "star: red" ("colon") or "star red" ("plain") instead of "red star" (set from
--shape-first)."""
RESTATE = False
"""Answer "The star is red." instead of "red" (set from --restate): the look-up then happens right after
the object's name, not six template tokens after the question."""
SPACE_ANSWER = False
"""Answer " red" (the list's own token) instead of "red" (set from --space-answer)."""
DENSE = False
"""Open half the sequences with "What colour is each shape?" → "The star is red, the circle is blue." (shapes in
random order; set from --dense): a look-up at every colour, the shape one token back."""
PROMPT, ANSWER, ASKED = 0, 1, 2
"""Kinds of text piece: unlabelled, labelled, labelled and scored (the asked colour)."""


def recall_segments(rng: np.random.Generator, questions: int, eot: str) -> list[tuple[str, int]]:
    """(text, kind) pieces of one sequence."""
    n = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))
    shapes = rng.choice(len(SHAPE_WORDS), n, replace=False)
    colours = rng.integers(0, len(COLOUR_WORDS), n)
    items = zip(colours, shapes, strict=True)
    if SHAPE_FIRST:
        separator = ": " if SHAPE_FIRST == "colon" else " "
        listing = ", ".join(f"{SHAPE_WORDS[s]}{separator}{COLOUR_WORDS[c]}" for c, s in items)
    else:
        listing = ", ".join(f"{COLOUR_WORDS[c]} {SHAPE_WORDS[s]}" for c, s in items)
    asked = rng.choice(n, min(questions, n), replace=False)
    segments: list[tuple[str, int]] = []
    opened = False
    if DENSE and rng.random() < 0.5:
        each = ", ".join(
            f"the {SHAPE_WORDS[shapes[k]]} is {COLOUR_WORDS[colours[k]]}" for k in rng.permutation(n)
        )
        question = (
            f"<|im_start|>user\nObjects: {listing}. What colour is each shape?{eot}\n<|im_start|>assistant\n"
        )
        segments += [(question, PROMPT), ("T" + each[1:] + "." + eot, ANSWER)]
        opened = True
    for i, k in enumerate(asked):
        opening = (
            f"<|im_start|>user\nObjects: {listing}. " if i == 0 and not opened else "\n<|im_start|>user\n"
        )
        question = f"{opening}What colour is the {SHAPE_WORDS[shapes[k]]}?{eot}\n<|im_start|>assistant\n"
        if RESTATE:
            colour = (f"The {SHAPE_WORDS[shapes[k]]} is", ANSWER), (f" {COLOUR_WORDS[colours[k]]}", ASKED)
            segments += [(question, PROMPT), *colour, ("." + eot, ANSWER)]
        else:
            answer = (" " if SPACE_ANSWER else "") + COLOUR_WORDS[colours[k]]
            segments += [(question, PROMPT), (answer, ASKED), (eot, ANSWER)]
    return segments


def encode(
    tokenizer, batch: list[list[tuple[str, int]]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded input_ids, labels (answers only), attention mask and the position of the first asked
    colour's first token, [B, T] ×3 and [B]."""
    ids, labels, asked = [], [], []
    for segments in batch:
        row, lab, first = [], [], None
        for text, kind in segments:
            tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
            if kind == ASKED and first is None:
                first = len(row)
            row += tokens
            lab += tokens if kind != PROMPT else [-100] * len(tokens)
        ids.append(row)
        labels.append(lab)
        asked.append(first)
    length = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (length - len(r)) + r for r in ids])
    label_ids = torch.tensor([[-100] * (length - len(r)) + r for r in labels])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in ids])
    first = torch.tensor([length - len(r) + a for r, a in zip(ids, asked, strict=True)])
    return input_ids, label_ids, mask, first


@torch.no_grad()
def first_answer_accuracy(model, tokenizer, eot: str, batches: int = 10, seed: int = 99) -> float:
    global DENSE
    rng = np.random.default_rng(seed)
    hits: list[bool] = []
    dense, DENSE = DENSE, False  # the single question alone, as stage 3 asks it
    for _ in range(batches):
        input_ids, _, mask, asked = encode(tokenizer, [recall_segments(rng, 1, eot) for _ in range(16)])
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        rows = torch.arange(len(asked))
        hits += (logits[rows, asked - 1].argmax(-1) == input_ids[rows, asked]).tolist()
    DENSE = dense
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument(
        "--questions", type=int, default=6, help="questions per sequence (at most the objects)"
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--rope-theta", type=float, default=20.0, help="rotary base of the language model")
    parser.add_argument("--hidden-size", type=int, default=128, help="language model width")
    parser.add_argument("--layers", type=int, default=4, help="language model blocks")
    parser.add_argument("--objects", type=int, nargs=2, default=[2, 7], help="fewest and most objects")
    parser.add_argument("--restate", action="store_true", help='answer "The star is red."')
    parser.add_argument(
        "--shape-first",
        choices=["", "colon", "plain"],
        default="",
        help='list items as "star: red" or "star red"',
    )
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--kv-heads", type=int, default=2, help="key/value heads")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--space-answer", action="store_true", help='answer " red", the listed token')
    parser.add_argument("--constant-lr", action="store_true", help="no cosine decay after the warm-up")
    parser.add_argument(
        "--prev-aux",
        type=float,
        default=0.0,
        help="weight of a previous-token read-out loss on a block's output",
    )
    parser.add_argument(
        "--prev-layer", type=int, default=1, help="block whose output the read-out reads (1-based)"
    )
    parser.add_argument("--dense", action="store_true", help='open with "What colour is each shape?"')
    parser.add_argument("--load", default="", help="start from this backbone folder (e.g. an earlier --save)")
    parser.add_argument("--save", default="", help="save the trained backbone to this folder")
    parser.add_argument("--every", type=int, default=250, help="print the accuracy every this many steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    global OBJECTS, SHAPE_FIRST, RESTATE, SPACE_ANSWER, DENSE
    OBJECTS, SHAPE_FIRST, RESTATE = tuple(args.objects), args.shape_first, args.restate
    SPACE_ANSWER, DENSE = args.space_answer, args.dense
    spec = TinySpec(
        rope_theta=args.rope_theta,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=2 * args.hidden_size,
    )
    backbone = load_backbone(args.load) if args.load else build_tiny("qwen2_5_vl", seed=0, spec=spec)
    model, tokenizer, eot = backbone.model, backbone.tokenizer, backbone.tokenizer.eos_token

    prev_head = torch.nn.Linear(spec.hidden_size, len(tokenizer), bias=False)

    def step(index: int, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if index % args.every == 0:
            print(json.dumps({"step": index, "accuracy": first_answer_accuracy(model, tokenizer, eot, 8)}))
        batch = [recall_segments(rng, args.questions, eot) for _ in range(args.batch_size)]
        input_ids, labels, mask, _ = encode(tokenizer, batch)
        out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=args.prev_aux > 0)
        loss = next_token_loss(out.logits, labels)
        parts = {"lm": float(loss.detach())}
        if args.prev_aux > 0:  # the block's output at t names the token at t − 1
            states = out.hidden_states[args.prev_layer][:, 1:]
            previous = input_ids[:, :-1].masked_fill(mask[:, :-1] == 0, -100)
            aux = torch.nn.functional.cross_entropy(
                prev_head(states).flatten(0, 1), previous.flatten(), ignore_index=-100
            )
            loss = loss + args.prev_aux * aux
            parts["prev"] = float(aux.detach())
        return loss, parts

    schedule = Schedule(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        min_lr_fraction=1.0 if args.constant_lr else 0.05,
    )
    modules = [model.model.language_model, model.lm_head] + ([prev_head] if args.prev_aux > 0 else [])
    run_loop(modules, schedule, step, 0, "recall", True)
    model.eval()
    print(json.dumps({"step": args.steps, "accuracy": first_answer_accuracy(model, tokenizer, eot)}))
    if args.save:
        backbone.save(args.save)


if __name__ == "__main__":
    main()
