"""The language-model loss with the head on the labelled positions only (`answer_loss`) against the head on
every position (`lm_logits` + `next_token_loss`): seconds per training step (forward + backward) and the
peak resident memory of a process that runs only that loss, in the same run, on stage 0's recall batches
and stage 0's full text dialogues (the tiny preset of `StackConfig`).

    python bench/bench_answer_loss.py [--batch 128] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time

import numpy as np
import torch

from segcompass.backbones import build_tiny
from segcompass.pretrain.config import StackConfig
from segcompass.pretrain.language import answer_loss, encode_dialogues, lm_logits, next_token_loss
from segcompass.pretrain.text import RecallPhase, recall_dialogue, text_dialogue, text_samples
from segcompass.world.config import WorldConfig

BATCHES = ("recall (2 objects, 2 questions)", "stage 0 dialogues (6 questions, format 60 %)")


def measure(kind: str, head: str, batch_size: int, repeats: int, threads: int, out) -> None:
    """In a fresh process: median seconds of forward + backward of one loss, and the process's peak RSS."""
    torch.set_num_threads(threads)
    backbone = build_tiny("qwen2_5_vl", seed=0, spec=StackConfig().tiny_spec())
    samples = text_samples(WorldConfig(), "train", batch_size)
    rng = np.random.default_rng(0)
    if kind == BATCHES[0]:
        dialogues = [recall_dialogue(i, s, rng, RecallPhase()) for i, s in enumerate(samples)]
    else:
        dialogues = [text_dialogue(i, s, rng, 6, 0.6, 4) for i, s in enumerate(samples)]
    batch = encode_dialogues(backbone, None, dialogues)
    if head == "everywhere":
        loss_fn = lambda: next_token_loss(lm_logits(backbone, batch, None), batch.labels)  # noqa: E731
    else:
        loss_fn = lambda: answer_loss(backbone, batch, None)  # noqa: E731
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        loss_fn().backward()
        times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((float(np.median(times[1:])), rss, batch.labels.numel(), int((batch.labels != -100).sum())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="sequences a batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for kind in BATCHES:
        result = {}
        for head in ("everywhere", "labels"):
            queue = context.Queue()
            process = context.Process(
                target=measure, args=(kind, head, args.batch, args.repeats, args.threads, queue)
            )
            process.start()
            result[head] = queue.get()
            process.join()
        (t_every, rss_every, tokens, labelled), (t_ours, rss_ours, _, _) = (
            result["everywhere"],
            result["labels"],
        )
        row = {
            "batch": kind,
            "tokens": tokens,
            "labelled": labelled,
            "head_everywhere_s": round(t_every, 3),
            "head_on_labels_s": round(t_ours, 3),
            "speed_up": round(t_every / t_ours, 2),
            "peak_rss_mb_everywhere": round(rss_every),
            "peak_rss_mb_labels": round(rss_ours),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
