"""Benchmark of the SegCompass head: sparse concept path vs the reference's dense formulation.

Prints ratios measured in one run, plus the peak memory of each variant: the largest growth of the
bytes malloc has handed out (glibc mallinfo2: in-use arena + mmapped blocks, where torch's CPU tensors
live) over the call, sampled every millisecond:

(a) codebook lookup + backward: embedding-bag over the support (sparse row gradient) vs the dense
    bias-free Linear over the dense [T, d_sae] activations;
(b) one whole head training step (forward, backward, AdamW step), sparse vs dense codebook path;
(c) the SAE supports of the frozen prefix (image + prompt tokens) cached vs recomputed each step.

    python bench/bench_head.py                      # d_sae 65536, T 1000, ~100 atoms/token
    python bench/bench_head.py --tokens 200 --d-in 128   # quick

Run it on a quiet machine (it warns when the load average exceeds the core count).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sae_lens import StandardSAE, StandardSAEConfig

from segcompass.head import (
    ConceptSupport,
    HeadConfig,
    QueryCodebook,
    SamDecoderConfig,
    SegCompassHead,
    build_head,
    build_optimizer,
    head_param_groups,
)
from segcompass.head.outputs import HeadOutput

logger = logging.getLogger("bench_head")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


def _heap() -> int:
    """Bytes currently allocated through malloc (arena in use + mmapped chunks)."""
    m = _LIBC.mallinfo2()
    return int(m.uordblks + m.hblkhd)


@dataclass
class Measure:
    """Median time and peak heap growth of a callable."""

    seconds: float
    peak_mib: float


def _one(fn: Callable[[], object], cuda: bool = False) -> tuple[float, float]:
    if cuda:  # GPU time and peak growth of allocated device memory
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_bytes = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - base_bytes) / 2**20
    base = _heap()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _heap())
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    return dt, (max(peak[0], _heap()) - base) / 2**20


def measure(fns: list[Callable[[], object]], repeats: int, cuda: bool = False) -> list[Measure]:
    """Median wall time and largest heap growth of each callable, run round-robin (after one warm-up each)
    so that load from other processes hits every variant alike. `cuda`: synchronise around each call and
    report the growth of allocated GPU memory instead of the heap's."""
    for fn in fns:
        fn()
    runs: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            runs[i].append(_one(fn, cuda))
    return [Measure(statistics.median(t for t, _ in r), max(p for _, p in r)) for r in runs]


def random_support(tokens: int, d_sae: int, per_token: int, seed: int = 0) -> ConceptSupport:
    """A one-sample support with `per_token` distinct atoms on every token."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.stack([torch.randperm(d_sae, generator=g)[:per_token].sort().values for _ in range(tokens)])
    tok = torch.arange(tokens).repeat_interleave(per_token)
    vals = torch.rand(tokens * per_token, generator=g) * 3 + 2
    return ConceptSupport(torch.zeros_like(tok), tok, atoms.flatten(), vals.requires_grad_(True), 1)


def bench_codebook(args: argparse.Namespace) -> None:
    """(a) sparse lookup + backward vs dense Linear + backward."""
    support = random_support(args.tokens, args.d_sae, args.atoms)
    bags = support.bags()
    cb = QueryCodebook(args.d_sae, args.d_c, sparse_grad=True)
    probe = torch.randn(args.tokens, args.d_c)

    def sparse() -> None:
        (cb(support, bags) * probe).sum().backward()
        cb.weight.grad = support.values.grad = None  # freed after the call: the peak counts them

    def sparse_dense_grad() -> None:
        cb.sparse_grad = False
        sparse()
        cb.sparse_grad = True

    def dense() -> None:
        acts = support.to_dense(args.tokens, args.d_sae)[0]  # [T, d_sae], as the reference holds it
        (F.linear(acts, cb.weight.t()) * probe).sum().backward()
        cb.weight.grad = support.values.grad = None

    m_s, m_sd, m_d = measure([sparse, sparse_dense_grad, dense], args.repeats)
    logger.info(
        "(a) codebook lookup + backward, T=%d, %d atoms/token, d_sae=%d, d_c=%d",
        args.tokens,
        args.atoms,
        args.d_sae,
        args.d_c,
    )
    logger.info(
        "    dense Linear (reference)            %8.1f ms  peak +%7.1f MiB", m_d.seconds * 1e3, m_d.peak_mib
    )
    logger.info(
        "    embedding-bag, dense grad (default) %8.1f ms  peak +%7.1f MiB  (%.1f× faster)",
        m_sd.seconds * 1e3,
        m_sd.peak_mib,
        m_d.seconds / m_sd.seconds,
    )
    logger.info(
        "    embedding-bag, sparse grad          %8.1f ms  peak +%7.1f MiB  (%.1f× faster)",
        m_s.seconds * 1e3,
        m_s.peak_mib,
        m_d.seconds / m_s.seconds,
    )


def make_head(args: argparse.Namespace) -> tuple[SegCompassHead, dict[str, torch.Tensor]]:
    """Paper-width head (d_c 512, K 4, real SAM geometry; SAM decoder as segment-anything's) over a random SAE."""
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=args.d_in, d_sae=args.d_sae, apply_b_dec_to_input=False))
    cfg = HeadConfig.paper(args.d_in, num_slots=4, d_sae=args.d_sae, sam_decoder=SamDecoderConfig())
    head = build_head(cfg, sae)
    # a threshold that gives ~args.atoms active atoms per token on these random states
    x = torch.randn(1, args.tokens, args.d_in)
    with torch.no_grad():
        acts = sae.encode(x[0, :64])
    tau = float(acts.abs().flatten().kthvalue(acts.numel() - 64 * args.atoms).values)
    head.concepts.tau = max(tau, 1e-6)
    inputs = {
        "hook_states": x,
        "concept_token_mask": torch.ones(1, args.tokens, dtype=torch.bool),
        "concentration_states": torch.randn(1, cfg.num_slots, args.d_in),
        "image_embeddings": torch.randn(1, *cfg.embedding_shape),
    }
    return head, inputs


def dense_reference_forward(
    head: SegCompassHead, x: dict[str, torch.Tensor], targets: list[torch.Tensor]
) -> HeadOutput:
    """The reference formulation: dense thresholded activations [T, d_sae] → dense Linear, rest identical."""
    sae = head.concepts.sae
    mask = x["concept_token_mask"]
    with torch.no_grad():
        acts = sae.encode(x["hook_states"][mask])  # [T, d_sae] dense, as the reference
        acts = torch.where(acts.abs() >= head.concepts.tau, acts, 0.0)
    concepts_all = F.linear(acts, head.codebook.weight.t())  # [T, d_c]
    active = (acts != 0).any(-1)
    tok = active.nonzero().flatten()
    support = ConceptSupport(torch.zeros_like(tok), tok, torch.zeros_like(tok), torch.ones(tok.numel()), 1)
    bags = support.bags()
    agg = head.aggregator(concepts_all[tok], bags, 1)
    q = head.fusion(x["concentration_states"], agg.slot_reps)
    mapped = head.slot_mapper(q, x["image_embeddings"])
    masks = head.mask_head(x["image_embeddings"], mapped.heatmap_logits)
    out = HeadOutput(
        mapped.heatmap_logits, mapped.confidence_logits, masks, q, agg.slot_reps, support, None, 0.5
    )  # type: ignore[arg-type]
    head.attach_losses(out, targets)
    return out


def bench_step(args: argparse.Namespace) -> None:
    """(b) whole head training step, sparse vs dense; (c) prefix supports cached vs recomputed."""
    head, x = make_head(args)
    targets = [torch.zeros(2, 256, 256)]
    targets[0][0, :100, :100] = targets[0][1, 150:, 120:] = 1
    opt = build_optimizer(head_param_groups(head, 1e-6))
    n_active = head.encode_support(x["hook_states"], x["concept_token_mask"]).num_entries
    logger.info(
        "(b) whole head step: T=%d, d_in=%d, d_sae=%d, %.0f atoms/token, K=%d",
        args.tokens,
        args.d_in,
        args.d_sae,
        n_active / args.tokens,
        head.cfg.num_slots,
    )

    def step_sparse() -> None:
        head(**x, targets=targets).losses.total.backward()
        opt.step()
        opt.zero_grad()

    def step_dense() -> None:
        dense_reference_forward(head, x, targets).losses.total.backward()
        opt.step()
        opt.zero_grad()

    m_s, m_d = measure([step_sparse, step_dense], args.repeats)
    logger.info("    dense reference  %8.1f ms  peak +%7.1f MiB", m_d.seconds * 1e3, m_d.peak_mib)
    logger.info(
        "    sparse (ours)    %8.1f ms  peak +%7.1f MiB  (%.2f× faster)",
        m_s.seconds * 1e3,
        m_s.peak_mib,
        m_d.seconds / m_s.seconds,
    )

    prefix = torch.zeros_like(x["concept_token_mask"])
    prefix[:, : int(args.tokens * args.prefix_frac)] = True
    cached = head.encode_support(x["hook_states"], prefix)
    x_cot = {**x, "concept_token_mask": ~prefix}

    def step_recompute() -> None:
        head(**x, targets=targets).losses.total.backward()
        opt.step()
        opt.zero_grad()

    def step_cached() -> None:
        head(**x_cot, targets=targets, prefix_support=cached).losses.total.backward()
        opt.step()
        opt.zero_grad()

    def support_recompute() -> None:
        head.encode_support(x["hook_states"], x["concept_token_mask"])

    def support_cached() -> None:
        ConceptSupport.merge(cached, head.encode_support(x["hook_states"], ~prefix))

    m_r, m_c, s_r, s_c = measure(
        [step_recompute, step_cached, support_recompute, support_cached], args.repeats
    )
    logger.info("(c) frozen prefix = %d of %d tokens", int(prefix.sum()), args.tokens)
    logger.info(
        "    supports recomputed %8.1f ms, cached %8.1f ms (%.2f×)",
        s_r.seconds * 1e3,
        s_c.seconds * 1e3,
        s_r.seconds / s_c.seconds,
    )
    logger.info("    head step recomputed %7.1f ms  peak +%7.1f MiB", m_r.seconds * 1e3, m_r.peak_mib)
    logger.info(
        "    head step cached     %7.1f ms  peak +%7.1f MiB  (%.2f× faster)",
        m_c.seconds * 1e3,
        m_c.peak_mib,
        m_r.seconds / m_c.seconds,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1000)
    p.add_argument("--atoms", type=int, default=100, help="active atoms per token")
    p.add_argument("--d-sae", type=int, default=65536)
    p.add_argument("--d-c", type=int, default=512)
    p.add_argument("--d-in", type=int, default=512, help="LLM hidden size (SAE d_in) for (b), (c)")
    p.add_argument("--prefix-frac", type=float, default=0.8, help="share of tokens in the frozen prefix (c)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=["a", "bc"], default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load = os.getloadavg()[0]
    logger.info("torch %s, %d threads, load average %.2f", torch.__version__, torch.get_num_threads(), load)
    if load > (os.cpu_count() or 1):
        logger.warning("the machine is busy (load %.1f): ratios are noisy", load)
    if args.only in (None, "a"):
        bench_codebook(args)
    if args.only in (None, "bc"):
        bench_step(args)


if __name__ == "__main__":
    main()
