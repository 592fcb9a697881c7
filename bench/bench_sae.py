"""SAE training throughput: ratios measured in one run, plus peak memory (bench/README.md has the figures).

(a) our pipeline (store → `train_sae`, standard SAE) achieved GFLOP/s ÷ plain torch matmul GFLOP/s for the
    five products of a dense step with the same shapes (≈ 10·d_in·d_sae FLOPs per token); target ≥ 0.6.
(b) tokens/s of our pipeline ÷ tokens/s of sae-lens called directly with its defaults (`SAETrainer.fit()`
    on a `StandardTrainingSAE`, default `SAETrainerConfig`) on the same activations; target ≥ 1.0.
(c) TopK (k active atoms): sae-lens's dense `TopKTrainingSAE` vs our `SparseTopKTrainingSAE` (sparse
    decoder + chunked sparse encoder backward), same trainer, same batches: tokens/s and peak memory.

Step times are steady-state: the time between consecutive batch requests of the trainer, after `--warmup`
steps. Peak memory is the process's peak RSS during each phase (reset through /proc/self/clear_refs), so it
includes parameters, gradients and Adam state. Quick check: `--d-in 256 --d-sae 4096 --batch 512`.

    python bench/bench_sae.py                      # d_in 4096, d_sae 65536, fp32, CPU
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# ---- measurement helpers ------------------------------------------------------------------------------
def reset_peak() -> None:
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class Clock:
    """Records the time of every batch request; `rate` gives steady-state tokens/s."""

    def __init__(self, batch: int, warmup: int) -> None:
        self.batch, self.warmup, self.times = batch, warmup, []

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def step_seconds(self) -> float:
        t = self.times[self.warmup :]
        if len(t) < 2:
            raise RuntimeError("not enough steps to time; raise --steps")
        return (t[-1] - t[0]) / (len(t) - 1)

    def rate(self) -> float:
        return self.batch / self.step_seconds()


class TimedIterator:
    """A sae-lens data provider over in-memory batches that ticks a clock per request."""

    def __init__(self, data: torch.Tensor, batch: int, clock: Clock) -> None:
        self.data, self.batch, self.clock, self.i = data, batch, clock, 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        self.clock.tick()
        n = self.data.shape[0] // self.batch
        out = self.data[(self.i % n) * self.batch : (self.i % n + 1) * self.batch]
        self.i += 1
        return out


class TimedStore:
    """An activation store whose batch stream ticks a clock (passed to `train_sae` as its source)."""

    def __init__(self, store, clock: Clock) -> None:
        self.store, self.clock = store, clock

    def __getattr__(self, name):
        return getattr(self.store, name)

    def batches(self, *args, **kwargs):
        for batch in self.store.batches(*args, **kwargs):
            self.clock.tick()
            yield batch


# ---- the measurements ---------------------------------------------------------------------------------
def matmul_gflops(d_in: int, d_sae: int, batch: int, repeats: int) -> float:
    """GFLOP/s of the five matmuls of a dense SAE step (forward enc/dec, backward dec weight/input, enc weight)."""
    x, w_enc, w_dec = torch.randn(batch, d_in), torch.randn(d_in, d_sae), torch.randn(d_sae, d_in)
    h, g_out = torch.randn(batch, d_sae), torch.randn(batch, d_in)
    out_h, out_x = torch.empty(batch, d_sae), torch.empty(batch, d_in)
    out_wd, out_we = torch.empty(d_sae, d_in), torch.empty(d_in, d_sae)

    def step() -> None:
        torch.mm(x, w_enc, out=out_h)
        torch.mm(h, w_dec, out=out_x)
        torch.mm(h.t(), g_out, out=out_wd)
        torch.mm(g_out, w_dec.t(), out=out_h)
        torch.mm(x.t(), h, out=out_we)

    step()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - t) / repeats
    return 10 * d_in * d_sae * batch / seconds / 1e9


def ours(store, args, workdir: Path) -> dict:
    from sae.training import TrainConfig, train_sae

    clock = Clock(args.batch, args.warmup)
    cfg = TrainConfig(
        store=str(store.root),
        out=str(workdir / "ours"),
        d_sae=args.d_sae,
        batch_size=args.batch,
        total_tokens=args.batch * (args.steps + args.warmup + 1),
        val_max_tokens=0,
        checkpoint_every_tokens=10**15,
        progress=False,
        device="cpu",
    )
    reset_peak()
    train_sae(cfg, source=TimedStore(store, clock))
    return {"tokens_per_s": clock.rate(), "peak_gib": peak_gib(), "step_s": clock.step_seconds()}


def sae_lens_direct(data: torch.Tensor, args, workdir: Path) -> dict:
    from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    clock = Clock(args.batch, args.warmup)
    steps = args.steps + args.warmup + 1
    reset_peak()
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae))
    cfg = SAETrainerConfig(
        total_training_samples=steps * args.batch,
        train_batch_size_samples=args.batch,
        lr_end=3e-4 / 10,  # what sae-lens's runner config sets for its default lr (the trainer requires it)
        logger=LoggingConfig(log_to_wandb=False),
    )
    trained = SAETrainer(cfg, sae, data_provider=TimedIterator(data, args.batch, clock)).fit()
    trained.save_inference_model(str(workdir / "direct"))
    return {"tokens_per_s": clock.rate(), "peak_gib": peak_gib(), "step_s": clock.step_seconds()}


def topk(data: torch.Tensor, args, sparse: bool) -> dict:
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    from sae.training import SparseTopKTrainingSAE, SparseTopKTrainingSAEConfig

    clock = Clock(args.batch, args.warmup)
    steps = args.steps + args.warmup + 1
    reset_peak()
    kw = {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k}
    sae = (
        SparseTopKTrainingSAE(SparseTopKTrainingSAEConfig(**kw))
        if sparse
        else TopKTrainingSAE(TopKTrainingSAEConfig(**kw))
    )
    cfg = SAETrainerConfig(
        total_training_samples=steps * args.batch,
        train_batch_size_samples=args.batch,
        lr_end=3e-4 / 10,
        logger=LoggingConfig(log_to_wandb=False),
    )
    SAETrainer(cfg, sae, data_provider=TimedIterator(data, args.batch, clock)).fit()
    return {"tokens_per_s": clock.rate(), "peak_gib": peak_gib(), "step_s": clock.step_seconds()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=4096)
    p.add_argument("--d-sae", type=int, default=65536)
    p.add_argument("--batch", type=int, default=1024, help="tokens per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per phase")
    p.add_argument("--k", type=int, default=64, help="TopK active atoms")
    p.add_argument("--parts", default="a,b,c", help="which of a, b, c to run")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    flops = 10 * args.d_in * args.d_sae
    print(
        f"d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch}, fp32, {torch.get_num_threads()} threads"
    )
    results: dict = {"shape": vars(args)}
    g = torch.Generator().manual_seed(0)
    n_rows = args.batch * 4
    data = torch.randn(n_rows, args.d_in, generator=g)
    reps = max(2, args.steps)

    def probe(tag: str) -> float:
        """Matmul GFLOP/s right before/after a phase: the machine may be shared, so each phase is compared
        with the matmul rate measured next to it."""
        mm = matmul_gflops(args.d_in, args.d_sae, args.batch, reps)
        results.setdefault("matmul_probes", {})[tag] = mm
        return mm

    def report(name: str, r: dict, mm: float) -> None:
        r["gflops"] = flops * r["tokens_per_s"] / 1e9
        r["matmul_gflops_adjacent"] = mm
        r["fraction_of_matmul"] = r["gflops"] / mm
        print(f"{name:<36} {r['tokens_per_s']:9.1f} tok/s {r['gflops']:8.1f} GFLOP/s "
              f"({r['fraction_of_matmul']:.3f} of adjacent matmul {mm:.1f}), peak {r['peak_gib']:.2f} GiB")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench-sae-") as tmp:
        workdir = Path(tmp)
        mm0 = probe("start")
        if parts & {"a", "b"}:
            from sae.store import write_store

            store = write_store(
                workdir / "acts", data, doc_ids=torch.arange(n_rows) // 256, shard_tokens=args.batch
            )
            results["ours"] = r = ours(store, args, workdir)
            mm1 = probe("after_ours")
            report("ours (store -> train_sae, standard)", r, (mm0 + mm1) / 2)
            print(f"(a) achieved / matmul GFLOP/s: {r['fraction_of_matmul']:.3f}  (target >= 0.6)")
            mm0 = mm1
        if "b" in parts:
            results["sae_lens"] = d = sae_lens_direct(data, args, workdir)
            mm1 = probe("after_sae_lens")
            report("sae-lens direct (defaults, fit())", d, (mm0 + mm1) / 2)
            raw = results["ours"]["tokens_per_s"] / d["tokens_per_s"]
            norm = results["ours"]["fraction_of_matmul"] / d["fraction_of_matmul"]
            results["b_raw"], results["b_normalised"] = raw, norm
            print(f"(b) ours / sae-lens tokens/s: {raw:.3f} raw, {norm:.3f} normalised by adjacent matmul rate "
                  "(target >= 1.0)")  # fmt: skip
            mm0 = mm1
        if "c" in parts:
            # sparse first: a phase's peak can only be over-read (memory kept from an earlier phase), and
            # the dense phase needs more than whatever the sparse one leaves behind
            results["topk_sparse"] = sp = topk(data, args, sparse=True)
            mm1 = probe("after_topk_sparse")
            report(f"TopK k={args.k} sparse (ours)", sp, (mm0 + mm1) / 2)
            results["topk_dense"] = dn = topk(data, args, sparse=False)
            mm2 = probe("after_topk_dense")
            report(f"TopK k={args.k} dense (sae-lens)", dn, (mm1 + mm2) / 2)
            raw = sp["tokens_per_s"] / dn["tokens_per_s"]
            norm = sp["fraction_of_matmul"] / dn["fraction_of_matmul"]
            print(f"(c) sparse / dense TopK tokens/s: {raw:.2f}x raw, {norm:.2f}x normalised; "
                  f"peak memory {sp['peak_gib'] / dn['peak_gib']:.2f}x")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
