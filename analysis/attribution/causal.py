"""Causal check of atom attribution: does removing a slot's top-attributed atoms from the sparse support
change that slot more than removing as many random atoms of the same support?

For every (sample, slot) and n in `CausalConfig.n_atoms`, the head runs again with the n best-ranked atoms
of the attribution removed (every entry of those atoms, via `AtomRemoval` between the concept interface and
the codebook), and with `seeds` draws of n atoms taken uniformly from the sample's support. Measured per
run: the slot's IoU against its own unablated mask (drop = 1 − IoU), against its Hungarian-matched GT
instance when targets are given, and the change of the attribution's slot objective (region held fixed).
`causal_summary` pairs top vs random per (sample, slot); `causal_figure` plots the drops over n.
`analysis.attribution.causal_splice` runs the same check with the ablation spliced into the backbone at the hook layer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from analysis.attribution.causal_summary import causal_figure, causal_summary
from analysis.attribution.core import (
    AttributionConfig,
    AttributionResult,
    attribute,
    check_slots,
    slot_objectives,
)
from analysis.attribution.head_inputs import HeadInputs
from analysis.attribution.support_filter import AtomRemoval, check_atoms_in_support
from segcompass.head.matching import match_slots
from segcompass.head.outputs import HeadOutput

logger = logging.getLogger(__name__)


@dataclass
class CausalConfig:
    """How many atoms are removed, how many random draws, and how the runs are batched."""

    n_atoms: tuple[int, ...] = (1, 2, 5, 10)
    """Numbers of atoms removed per (sample, slot); capped at the sample's number of support atoms."""
    seeds: int = 5
    """Random draws of n atoms per (sample, slot, n)."""
    slots: tuple[int, ...] | None = None
    """Slots to check (None: every slot of the attribution)."""
    seed: int = 0
    """Base seed of the random draws (each draw is seeded by (seed, sample, slot, n, draw))."""
    replicas_per_forward: int = 8
    """Ablated copies of a sample evaluated in one head forward (bounds memory)."""
    n_boot: int = 1000
    """Bootstrap resamples of the paired top − random difference."""
    confidence: float = 0.95
    """Confidence level of the bootstrap intervals."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class CausalResult:
    """Outcome of a causal check."""

    table: pd.DataFrame
    """One row per run: sample, sample_id, slot, n, n_removed, variant ('top' | 'random' | 'none': nothing
    removed, n = 0, the numerical noise floor), draw (−1 unless random),
    atoms (space-separated), iou (vs the unablated mask), iou_drop, gt_iou_ref / gt_iou / gt_iou_drop (NaN
    without a matched GT), objective_ref, objective, objective_drop (ref − ablated), objective_abs_change."""
    summary: pd.DataFrame
    """Per (n, metric): top vs random means, paired difference with bootstrap CI and sign test (see
    `causal_summary`)."""
    attribution: AttributionResult
    """The attribution whose ranking was tested."""


class Job(NamedTuple):
    """One ablation run of one (sample, slot)."""

    sample: int
    slot: int
    n: int
    variant: str
    draw: int
    atoms: list[int]


def support_atoms(attribution: AttributionResult, sample: int) -> np.ndarray:
    """Distinct atoms in sample `sample`'s support of the attributed forward."""
    sup = attribution.reference.support
    return np.unique(sup.atom_idx[sup.batch_idx == sample].cpu().numpy())


def plan_jobs(attribution: AttributionResult, cfg: CausalConfig, batch_size: int) -> list[Job]:
    """Top and random removals for every (sample, slot, n); samples without support are skipped (logged)."""
    if not cfg.n_atoms or min(cfg.n_atoms) < 1:
        raise ValueError(f"n_atoms must be a non-empty list of positive counts, got {cfg.n_atoms}")
    if cfg.seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {cfg.seeds}")
    slots = attribution.slots if cfg.slots is None else [int(k) for k in cfg.slots]
    missing = sorted(set(slots) - set(attribution.slots))
    if missing:
        raise ValueError(f"slot(s) {missing} were not attributed (attributed: {attribution.slots})")
    jobs = []
    for b in range(batch_size):
        pool = support_atoms(attribution, b)
        if pool.size == 0:
            logger.warning("sample %d has an empty concept support: skipped in the causal check", b)
            continue
        for k in slots:
            jobs.append(Job(b, k, 0, "none", -1, []))  # the unablated run in the same batching: noise floor
            for n in sorted(set(cfg.n_atoms)):
                m = min(n, pool.size)
                jobs.append(Job(b, k, n, "top", -1, attribution.top_atoms(b, k, m)))
                for d in range(cfg.seeds):
                    rng = np.random.default_rng([cfg.seed, b, k, n, d])
                    jobs.append(
                        Job(b, k, n, "random", d, sorted(int(a) for a in rng.choice(pool, m, replace=False)))
                    )
    return jobs


def mask_iou(a: Tensor, b: Tensor) -> float:
    """IoU of two bool masks (1 when both are empty)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


class Reference:
    """What every ablated run is compared with: the unablated masks, objectives and GT matches."""

    def __init__(self, attribution: AttributionResult, targets: list[Tensor] | None):
        ref = attribution.reference
        cfg = attribution.config
        self.kind = cfg.objective
        self.threshold = cfg.mask_threshold
        self.regions = attribution.regions
        self.masks = ref.slot_masks > cfg.mask_threshold  # [B, K, S, S]
        self.objective = slot_objectives(ref, cfg.objective, self.regions)  # [B, K]
        self.gt: dict[tuple[int, int], Tensor] = {}
        for b, t in enumerate(targets or []):
            m = match_slots(ref.slot_masks[b], t.to(ref.slot_masks.device))
            for k, j in zip(m.slot_idx.tolist(), m.target_idx.tolist(), strict=True):
                self.gt[(b, k)] = t[j].to(ref.slot_masks.device) > 0.5

    def row(self, job: Job, out: HeadOutput, i: int, objective: Tensor, sample_id: str) -> dict[str, Any]:
        """Measurements of replica `i` of `out` (an ablated forward of `job.sample`) for `job.slot`."""
        b, k = job.sample, job.slot
        mask = out.slot_masks[i, k] > self.threshold
        iou = mask_iou(mask, self.masks[b, k])
        gt = self.gt.get((b, k))
        gt_ref = mask_iou(self.masks[b, k], gt) if gt is not None else float("nan")
        gt_iou = mask_iou(mask, gt) if gt is not None else float("nan")
        ref_obj, obj = float(self.objective[b, k]), float(objective[i, k])
        return {
            "sample": b,
            "sample_id": sample_id,
            "slot": k,
            "n": job.n,
            "n_removed": len(job.atoms),
            "variant": job.variant,
            "draw": job.draw,
            "atoms": " ".join(map(str, job.atoms)),
            "iou": iou,
            "iou_drop": 1.0 - iou,
            "gt_iou_ref": gt_ref,
            "gt_iou": gt_iou,
            "gt_iou_drop": gt_ref - gt_iou,
            "objective_ref": ref_obj,
            "objective": obj,
            "objective_drop": ref_obj - obj,
            "objective_abs_change": abs(ref_obj - obj),
        }


def _chunks(jobs: list[Job], size: int) -> Iterable[list[Job]]:
    """Consecutive jobs of one sample, at most `size` at a time."""
    chunk: list[Job] = []
    for job in jobs:
        if chunk and (len(chunk) == size or chunk[0].sample != job.sample):
            yield chunk
            chunk = []
        chunk.append(job)
    if chunk:
        yield chunk


@torch.no_grad()
def ablate_atoms(
    head: nn.Module,
    inputs: HeadInputs,
    attribution: AttributionResult,
    sample: int,
    slot: int,
    atoms: list[int],
) -> dict[str, Any]:
    """Remove the chosen `atoms` (which must be in the sample's support) and measure `slot` as the causal
    check does; returns one row of `CausalResult.table` (variant 'chosen')."""
    check_slots([slot], head.cfg.num_slots)
    check_atoms_in_support(attribution.reference.support, sample, atoms)
    reference = Reference(attribution, inputs.targets)
    out = inputs.forward(head, AtomRemoval({sample: list(atoms)}))
    objective = slot_objectives(out, reference.kind, reference.regions)
    job = Job(sample, slot, len(atoms), "chosen", -1, [int(a) for a in atoms])
    return reference.row(job, out, sample, objective, inputs.sample_id(sample))


@torch.no_grad()
def causal_check(
    head: nn.Module,
    inputs: HeadInputs,
    attribution: AttributionResult | None = None,
    cfg: CausalConfig | None = None,
    attribution_cfg: AttributionConfig | None = None,
) -> CausalResult:
    """Remove each (sample, slot)'s top-n attributed atoms vs n random support atoms; measure the slot.

    Args:
        head: the head (in eval mode).
        inputs: the batch; `inputs.targets` adds IoU against the matched GT instance.
        attribution: an attribution of this batch (computed with `attribution_cfg` when None).
        cfg: numbers of atoms, random draws, batching.
    """
    cfg = cfg or CausalConfig()
    if attribution is None:
        with torch.enable_grad():
            attribution = attribute(head, inputs, attribution_cfg)
    reference = Reference(attribution, inputs.targets)
    jobs = plan_jobs(attribution, cfg, inputs.batch_size)
    rows = []
    bar = tqdm(total=len(jobs), desc="causal check", unit="run", disable=not cfg.progress)
    for chunk in _chunks(jobs, max(1, cfg.replicas_per_forward)):
        b = chunk[0].sample
        sub = inputs.select([b] * len(chunk))
        removal = AtomRemoval({i: job.atoms for i, job in enumerate(chunk)})
        out = sub.forward(head, removal)
        objective = slot_objectives(out, reference.kind, reference.regions[[b] * len(chunk)])
        rows += [reference.row(job, out, i, objective, inputs.sample_id(b)) for i, job in enumerate(chunk)]
        bar.update(len(chunk))
    bar.close()
    table = pd.DataFrame(rows)
    summary = causal_summary(table, n_boot=cfg.n_boot, confidence=cfg.confidence, seed=cfg.seed)
    return CausalResult(table, summary, attribution)


__all__ = [
    "CausalConfig",
    "CausalResult",
    "Job",
    "Reference",
    "ablate_atoms",
    "causal_check",
    "causal_figure",
    "causal_summary",
    "mask_iou",
    "plan_jobs",
    "support_atoms",
]
