"""Capture cost vs the plain HF forward, store write throughput, and peak memory vs data size.

Prints ratios measured in this run (not timed tests):
  full-depth capture / HF forward        target ≤ 1.10
  early-stop capture (mid layer) / HF    target ≤ 0.80
  run_capture (incl. store writes) / HF  (end to end)
  peak RSS with 10× the documents / with 1×  (flat ≈ 1)

    python bench/bench_capture.py                 # defaults: LLaVA-shaped, 512-d × 8 layers, hook layer 4
    python bench/bench_capture.py --family qwen2_5_vl --docs 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(family: str, hidden: int, layers: int, hook: int):
    from segcompass.backbones import TinySpec, build_tiny

    spec = TinySpec(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=8,
        num_kv_heads=8,
        intermediate_size=4 * hidden,
        hook_layer=hook,
    )
    return build_tiny(family, spec=spec)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def forward_ratios(args) -> dict:
    from _corpus import write_corpus

    from sae.capture import CaptureConfig, NnsightBackend, open_source, run_capture

    bb = build(args.family, args.hidden, args.layers, args.hook)
    tmp = Path(tempfile.mkdtemp())
    corpus = write_corpus(tmp / "data", n=args.docs)
    source = open_source(corpus)
    docs = [source[i] for i in range(len(source))]
    batches = [
        bb.prepare([d.image for d in docs[i : i + args.batch]], [d.text for d in docs[i : i + args.batch]])
        for i in range(0, len(docs), args.batch)
    ]
    full, early = NnsightBackend(bb, early_stop=False), NnsightBackend(bb, early_stop=True)

    def hf():
        with torch.no_grad():
            for b in batches:
                bb.model(**b.inputs)

    def cap_full():
        for b in batches:
            full.prompt_states(b)

    def cap_early():
        for b in batches:
            early.prompt_states(b)

    counter = iter(range(10**6))

    def end_to_end():
        out = tmp / f"store{next(counter)}"
        run_capture(
            CaptureConfig(data=str(corpus), out=str(out), batch_size=args.batch, shard_tokens=4096),
            bb,
            source,
        )

    t_hf = timed(hf, args.repeats)
    t_full = timed(cap_full, args.repeats)
    t_early = timed(cap_early, args.repeats)
    t_e2e = timed(end_to_end, args.repeats)
    tokens = sum(int(b.inputs["attention_mask"].sum()) for b in batches)
    store_bytes = sum(f.stat().st_size for f in (tmp / "store0" / "shards").iterdir())
    return {
        "hf_s": t_hf,
        "full_s": t_full,
        "early_s": t_early,
        "e2e_s": t_e2e,
        "tokens": tokens,
        "store_MB": store_bytes / 2**20,
    }


def peak_rss_run(args, n_docs: int) -> float:
    """Peak RSS (MiB) of a fresh process capturing n_docs documents."""
    code = f"""
import sys, tempfile, pathlib
sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "tests")!r})
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from _corpus import write_corpus
from bench_capture import build
from sae.capture import CaptureConfig, run_capture
tmp = pathlib.Path(tempfile.mkdtemp())
corpus = write_corpus(tmp / 'data', n={n_docs})
bb = build({args.family!r}, {args.hidden}, {args.layers}, {args.hook})
run_capture(CaptureConfig(data=str(corpus), out=str(tmp / 's'), batch_size={args.batch}, shard_tokens=2048), bb)
import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="llava", help="backbone family of the synthetic benchmark model")
    p.add_argument("--hidden", type=int, default=512, help="text width of the benchmark model")
    p.add_argument("--layers", type=int, default=8, help="decoder layers of the benchmark model")
    p.add_argument("--hook", type=int, default=4, help="hook layer (mid-depth by default)")
    p.add_argument("--docs", type=int, default=24, help="documents per timing run")
    p.add_argument("--batch", type=int, default=8, help="documents per forward")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (best of)")
    p.add_argument(
        "--memory-docs",
        type=int,
        default=20,
        help="documents of the small memory run (the large one has 10×)",
    )
    args = p.parse_args()
    torch.manual_seed(0)
    r = forward_ratios(args)
    print(
        f"model: {args.family} {args.hidden}-d x {args.layers} layers, hook layer {args.hook}; "
        f"{args.docs} docs, {r['tokens']} tokens, batch {args.batch}, torch threads {torch.get_num_threads()}"
    )
    print(f"HF forward                  {r['hf_s']:.3f} s")
    print(
        f"capture, full depth         {r['full_s']:.3f} s   ratio {r['full_s'] / r['hf_s']:.2f}  (target <= 1.10)"
    )
    print(
        f"capture, early stop         {r['early_s']:.3f} s   ratio {r['early_s'] / r['hf_s']:.2f}  (target <= 0.80)"
    )
    print(
        f"run_capture + store writes  {r['e2e_s']:.3f} s   ratio {r['e2e_s'] / r['hf_s']:.2f}  "
        f"({r['tokens'] / r['e2e_s']:.0f} tok/s, {r['store_MB']:.1f} MB fp32 store)"
    )
    small = peak_rss_run(args, args.memory_docs)
    large = peak_rss_run(args, 10 * args.memory_docs)
    print(
        f"peak RSS: {args.memory_docs} docs {small:.0f} MiB, {10 * args.memory_docs} docs {large:.0f} MiB, "
        f"ratio {large / small:.2f} (flat = 1.00)"
    )
    print(json.dumps({k: round(v, 4) for k, v in r.items()}))


if __name__ == "__main__":
    main()
