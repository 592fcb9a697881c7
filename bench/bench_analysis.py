"""Coverage and sparsity reports: peak memory when the store grows 10×, and throughput.

Builds two activation stores of image documents (N and scale·N documents, 8×8 image tokens + 20 text
tokens each, random states) with their instance masks, and a random ReLU SAE; then runs each report
(`segcompass-analyze coverage` / `sparsity`, HTML + tables included) in a fresh Python process and reads
its peak RSS. Prints, measured in this run:

  peak RSS with 10× the store / with 1×    (flat ≈ 1; also the growth over the process's start-up RSS)
  tokens per second through SAE encode + analysis + report

    python bench/bench_analysis.py                        # N 300, ×10, d_in 512, d_sae 8192
    python bench/bench_analysis.py --docs 100 --d-sae 4096 --browser   # quick, + headless-Chromium check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # _browser_check: test tooling, not part of the package

GRID, CELL, TEXT = 8, 14, 20


def build_inputs(
    tmp: Path, docs: int, scale: int, d_in: int, d_sae: int, shard_tokens: int
) -> dict[str, Path]:
    from sae_lens import StandardSAE, StandardSAEConfig

    from sae.image_geometry import ImageGeometry
    from sae.store import CapturedDocument, StoreMetadata, StoreWriter, finalize_store
    from sae.token_types import TokenType
    from segcompass.world.masks import encode_rle

    rng = np.random.default_rng(0)
    size = GRID * CELL
    geom = ImageGeometry((size, size), (size, size), (0, 0), (GRID, GRID), CELL)
    lines = []
    for d in range(docs * scale):
        insts = []
        for i in range(int(rng.integers(2, 5))):
            m = np.zeros((size, size), dtype=bool)
            y, x = rng.integers(0, size - 30, 2)
            h, w = rng.integers(10, 40, 2)
            m[y : y + h, x : x + w] = True
            insts.append(
                {"id": i, "rle": encode_rle(m), "area": int(m.sum()), "target": i == 0, "size_name": None}
            )
        lines.append(json.dumps({"id": f"doc-{d}", "text": "t", "instances": insts}))
    corpus = tmp / "corpus"
    corpus.mkdir()
    (corpus / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    n_img = GRID * GRID
    rc = torch.stack(torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij"), -1).reshape(-1, 2)
    types = torch.tensor(
        [TokenType.SPECIAL] * 2
        + [TokenType.IMAGE] * n_img
        + [TokenType.INSTRUCTION] * 8
        + [TokenType.COT] * 10,
        dtype=torch.int8,
    )
    image_rc = torch.full((len(types), 2), -1, dtype=torch.int16)
    image_rc[2 : 2 + n_img] = rc.to(torch.int16)
    paths = {"corpus": corpus}
    for name, n in (("small", docs), ("large", docs * scale)):
        meta = StoreMetadata(backbone="bench", family="bench", hook_layer=1, d_in=d_in, dtype="float32")
        writer = StoreWriter(tmp / name, meta, shard_tokens=shard_tokens)
        g = torch.Generator().manual_seed(1)
        for d in range(n):
            writer.add(
                CapturedDocument(
                    doc_id=d,
                    source_id=f"doc-{d}",
                    text="t",
                    activations=torch.randn(len(types), d_in, generator=g),
                    token_ids=torch.zeros(len(types), dtype=torch.int32),
                    token_types=types,
                    image_rc=image_rc,
                    geometry=geom,
                )
            )
        writer.close()
        finalize_store(tmp / name, meta)
        paths[name] = tmp / name
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.normal_(0, d_in**-0.5)
        sae.b_enc.fill_(-2.0)  # sparse: ~2 % of atoms active per token
    sae.save_model(str(tmp / "sae"))
    paths["sae"] = tmp / "sae"
    return paths


def worker(args) -> None:
    """Run one report in this (fresh) process and print its time and memory as JSON."""
    from analysis.coverage.command import CoverageReportConfig, run_coverage_report
    from analysis.sparsity.command import SparsityReportConfig, run_sparsity_report
    from sae.store import ActivationStore

    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    common = {"sae": args.sae, "store": args.store, "corpus": args.corpus, "out": args.out, "progress": False}
    t0 = time.perf_counter()
    if args.worker == "coverage":
        _, files = run_coverage_report(CoverageReportConfig(**common))
    else:
        _, files = run_sparsity_report(SparsityReportConfig(**common))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens = ActivationStore.open(args.store).num_tokens(["image"] if args.worker == "coverage" else None)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": peak,
                "start_mb": start_rss,
                "tokens": tokens,
                "html": str(files.html),
            }
        )
    )


def run_worker(kind: str, store: Path, paths: dict[str, Path], out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--store", str(store), "--sae", str(paths["sae"])]
    cmd += ["--corpus", str(paths["corpus"]), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=300)
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--shard-tokens", type=int, default=8192)
    p.add_argument("--browser", action="store_true", help="also open the large coverage report in Chromium")
    p.add_argument("--worker", choices=["coverage", "sparsity"], help=argparse.SUPPRESS)
    for hidden in ("--store", "--sae", "--corpus", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        paths = build_inputs(tmp, args.docs, args.scale, args.d_in, args.d_sae, args.shard_tokens)
        print(f"inputs built in {time.perf_counter() - t0:.1f} s (d_in {args.d_in}, d_sae {args.d_sae})")
        results = {}
        for kind in ("coverage", "sparsity"):
            for size in ("small", "large"):
                r = run_worker(kind, paths[size], paths, tmp / f"out-{kind}-{size}")
                results[(kind, size)] = r
                mb = sum(f.stat().st_size for f in paths[size].rglob("*") if f.is_file()) / 2**20
                print(
                    f"{kind:9s} {size:5s} store {mb:7.1f} MiB  {r['tokens']:8d} tok  {r['seconds']:6.1f} s  "
                    f"{r['tokens'] / r['seconds']:8.0f} tok/s  peak RSS {r['peak_mb']:6.0f} MiB "
                    f"(start {r['start_mb']:.0f}, growth {r['peak_mb'] - r['start_mb']:.0f})"
                )
        for kind in ("coverage", "sparsity"):
            s, big = results[(kind, "small")], results[(kind, "large")]
            growth = (big["peak_mb"] - big["start_mb"]) / max(1.0, s["peak_mb"] - s["start_mb"])
            print(
                f"{kind}: peak RSS ×{args.scale} store / ×1 = {big['peak_mb'] / s['peak_mb']:.2f} "
                f"(growth over start-up {growth:.2f}); throughput {big['tokens'] / big['seconds']:.0f} tok/s"
            )
        if args.browser:
            from _browser_check import render_report

            shot = tmp / "report.png"
            check = render_report(results[("coverage", "large")]["html"], screenshot=shot)
            size = shot.stat().st_size if shot.exists() else 0
            print(
                f"chromium: {check.figures} figure(s) rendered, ok={check.ok}, console errors "
                f"{check.console_errors}, screenshot {size / 1024:.0f} KiB"
            )


if __name__ == "__main__":
    main()
