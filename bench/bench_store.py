"""`sae.store.write_store` scales linearly in rows: time for N and 10·N rows, measured in one run.

    python bench/bench_store.py                     # N = 131072 rows, d_in 64, 64-row documents
    python bench/bench_store.py --rows 16384 --repeats 1   # quick look

Prints both times and their ratio (target: 10x rows in <= 12x time). Each size is written `--repeats`
times into a fresh temporary folder, alternating sizes; the median is reported. The former grouping (one
scan of every row per document) took 0.4 s for 131k rows and 3.3 s for 524k (8.25x time for 4x rows).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sae.store import write_store


def _time_write(root: Path, rows: int, d_in: int, doc_len: int, shuffle: bool) -> float:
    x = torch.randn(rows, d_in, generator=torch.Generator().manual_seed(rows))
    doc_ids = torch.arange(rows) // doc_len
    if shuffle:
        doc_ids = doc_ids[torch.randperm(rows, generator=torch.Generator().manual_seed(1))]
    start = time.perf_counter()
    write_store(root, x, doc_ids=doc_ids)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=131_072, help="N (the large run writes 10·N rows)")
    parser.add_argument("--d-in", type=int, default=64, help="activation width")
    parser.add_argument("--doc-len", type=int, default=64, help="rows per document")
    parser.add_argument("--repeats", type=int, default=3, help="writes per size (median reported)")
    parser.add_argument("--shuffle", action="store_true", help="interleave the documents' rows")
    args = parser.parse_args()
    times: dict[int, list[float]] = {args.rows: [], 10 * args.rows: []}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for r in range(args.repeats):
            for rows in times:
                times[rows].append(
                    _time_write(Path(tmp) / f"s{rows}-{r}", rows, args.d_in, args.doc_len, args.shuffle)
                )
    small, large = (statistics.median(t) for t in times.values())
    for rows, t in times.items():
        print(f"write_store {rows:>10,} rows x {args.d_in}: {statistics.median(t):7.3f} s "
              f"({rows / statistics.median(t):,.0f} rows/s; runs {', '.join(f'{v:.3f}' for v in t)})")  # fmt: skip
    print(f"10x rows -> {large / small:.2f}x time (target <= 12)")


if __name__ == "__main__":
    main()
