"""Instance coverage: do the image tokens where the SAE is most active cover the objects?

For each image document, its image tokens are ranked by SAE activity (L0, activation mass or a chosen atom
set; ties broken at random, seeded); the top K % (K over a grid) are selected and each instance's pixels
covered by the selected tokens' cells (`ImageGeometry.token_index_map`) are counted. The same budget of
random tokens (several seeds) is the baseline; its expected coverage is exactly K's budget share. Pixels
under no token (cropped away) are left out of every denominator. Groups: all instances, referred vs
distractor instances (docs/design.md §9), per size class, and the background (pixels of no instance).

Memory is bounded: documents stream through `ActivityStream` and only per-(group, K) sums are kept.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.common.activity import RANKINGS, ActivityStream, DocumentActivity
from analysis.common.inputs import (
    AnalysisInputError,
    check_compatible,
    load_sae,
    open_store,
    require_image_geometry,
)
from analysis.common.instances import Instance, InstanceIndex
from analysis.coverage.tables import Bootstrap, CoverageSums, coverage_tables
from sae.store import ActivationStore
from sae.token_types import TokenType

logger = logging.getLogger(__name__)

DEFAULT_K_GRID = [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]


@dataclass
class CoverageConfig:
    """Parameters of the instance-coverage analysis."""

    rank_by: list[str] = field(default_factory=lambda: ["l0", "mass"])
    """Token rankings: l0 (active atoms), mass (summed activation), atoms (the chosen atom set)."""
    atoms: list[int] = field(default_factory=list)
    """Atom indices for the "atoms" ranking (added to rank_by when given)."""
    k_grid: list[float] = field(default_factory=lambda: list(DEFAULT_K_GRID))
    """Budgets: percentages of each image's tokens to select."""
    seeds: int = 5
    """Random-token baseline seeds (mean and spread are reported)."""
    seed: int = 0
    """Seed of the tie-breaking, the baseline and the bootstrap."""
    bootstrap: int = 1000
    """Bootstrap resamples (of documents) for the AUCs' confidence intervals."""
    confidence: float = 0.95
    """Confidence level of the intervals."""
    threshold: float = 0.0
    """An atom is active on a token when its activation is above this."""
    max_documents: int | None = None
    """Analyse at most this many image documents (None: all)."""
    chunk_elements: int = 1 << 24
    """Most SAE activations (tokens × d_sae) held in memory at once."""
    progress: bool = True
    """Show a progress bar."""

    def rankings(self) -> list[str]:
        ranks = list(dict.fromkeys(self.rank_by + (["atoms"] if self.atoms else [])))
        bad = [r for r in ranks if r not in RANKINGS]
        if bad or not ranks:
            raise AnalysisInputError(f"unknown or no rankings {bad or ranks}; choose from {RANKINGS}")
        if "atoms" in ranks and not self.atoms:
            raise AnalysisInputError("ranking 'atoms' needs --atoms (the atom indices to rank by)")
        ks = np.asarray(self.k_grid, dtype=float)
        if ks.size == 0 or (ks <= 0).any() or (ks > 100).any():
            raise AnalysisInputError(f"k_grid must hold percentages in (0, 100]; got {self.k_grid}")
        if self.seeds < 1:
            raise AnalysisInputError(f"seeds must be at least 1, got {self.seeds}")
        if not 0 < self.confidence < 1:
            raise AnalysisInputError(f"confidence must lie in (0, 1), got {self.confidence}")
        return ranks


@dataclass
class CoverageResult:
    """Coverage curves, areas under them and what went in, for one or several models (trained, control)."""

    curves: pd.DataFrame
    """model, ranking, group, k, coverage (mean over instances), coverage_std (over baseline seeds),
    pixel_coverage (pooled pixels), expected_random, instances, documents."""
    auc: pd.DataFrame
    """model, ranking, group, auc (area under coverage vs K/100 from (0, 0)) with its CI (auc_ci_low,
    auc_ci_high: documents resampled), auc_std (random: over seeds), random_auc, auc_gain (auc − random_auc)
    with its paired CI (gain_ci_low, gain_ci_high), instances, documents (`tables.AUC_COLUMNS`)."""
    inputs: pd.DataFrame
    """model, store, sae, documents read / used / skipped (and why), instances, image tokens."""
    contrasts: pd.DataFrame
    """model, ranking, contrast ("referred − distractor"), difference of AUCs with its CI (paired by
    document), documents."""


def _groups(inst: Instance) -> list[str]:
    return ["instances", "referred" if inst.target else "distractor", f"size:{inst.size_bucket}"]


def _document(
    doc: DocumentActivity,
    instances: list[Instance],
    ranks: list[str],
    cfg: CoverageConfig,
    sums: CoverageSums,
) -> int:
    """Add one document's coverage to `sums`; returns its number of usable instances."""
    geom = doc.meta.geometry
    img = doc.token_type == TokenType.IMAGE
    rc = doc.image_rc[img].astype(np.int64)
    rows, cols = geom.grid
    if (rc < 0).any() or (rc[:, 0] >= rows).any() or (rc[:, 1] >= cols).any():
        raise AnalysisInputError(f"document {doc.meta.doc_id}: image_rc outside its {rows}×{cols} grid")
    n_tok = len(rc)
    pos = np.full(rows * cols, -1, dtype=np.int64)
    pos[rc[:, 0] * cols + rc[:, 1]] = np.arange(n_tok)
    imap = geom.token_index_map()
    pm = np.where(imap >= 0, pos[np.maximum(imap, 0)], -1)
    valid = pm >= 0
    masks, kept = [], []
    for i, inst in enumerate(instances):
        if inst.size != tuple(geom.original_size):
            raise AnalysisInputError(
                f"document {doc.meta.doc_id} ({doc.meta.source_id}): instance {inst.id}'s mask is "
                f"{inst.size}, the captured image is {tuple(geom.original_size)} (h, w); wrong mask source?"
            )
        m = inst.mask()
        masks.append(m)
        if (m & valid).any():
            kept.append(i)
    union = np.any(masks, axis=0) if masks else np.zeros(pm.shape, dtype=bool)
    regions: list[tuple[Instance | None, np.ndarray]] = [(instances[i], masks[i]) for i in kept]
    regions.append((None, ~union))
    counts = np.stack([np.bincount(pm[m & valid], minlength=n_tok) for _, m in regions]).astype(np.float64)
    totals = counts.sum(1)
    regions_ok = totals > 0
    ks = np.asarray(cfg.k_grid, dtype=float)
    budget = np.clip(np.floor(ks / 100 * n_tok + 0.5).astype(np.int64), 1, n_tok)
    share = budget / n_tok
    tie_rng = np.random.default_rng([cfg.seed, doc.meta.doc_id])
    orders = {}
    for r in ranks:
        score = doc.score(r)[img]
        orders[(r, -1)] = np.lexsort((tie_rng.random(n_tok), -score))
    for s in range(cfg.seeds):
        orders[("random", s)] = np.random.default_rng([cfg.seed, 1 + s, doc.meta.doc_id]).permutation(n_tok)
    members: dict[str, list[int]] = defaultdict(list)
    for i, (inst, _) in enumerate(regions):
        if regions_ok[i]:
            for g in _groups(inst) if inst is not None else ["background"]:
                members[g].append(i)
    for key, order in orders.items():
        covered = np.cumsum(counts[:, order], axis=1)[:, budget - 1]
        for g, idx in members.items():
            sums.add((*key, g), covered[idx], totals[idx], share, doc.meta.doc_id)
    return len(kept)


def instance_coverage(
    store: ActivationStore | str,
    sae,
    instances: InstanceIndex,
    config: CoverageConfig | None = None,
    *,
    model: str = "trained",
) -> CoverageResult:
    """Coverage curves of one store + SAE (an sae-lens SAE, a folder, or a `LoadedSAE`)."""
    cfg = config or CoverageConfig()
    ranks = cfg.rankings()
    store = open_store(store)
    loaded = load_sae(sae)
    check_compatible(loaded, store)
    require_image_geometry(store)
    stream = ActivityStream(
        store,
        loaded,
        threshold=cfg.threshold,
        atoms=cfg.atoms or None,
        token_types=["image"],
        chunk_elements=cfg.chunk_elements,
        progress=cfg.progress,
        desc=f"coverage ({model})",
    )
    ks = np.asarray(cfg.k_grid, dtype=float)
    sums = CoverageSums(ks)
    skipped = defaultdict(int)
    used = n_inst = n_tokens = 0
    for doc in stream:
        insts = instances.get(doc.meta.source_id)
        reason = (
            "no geometry"
            if doc.meta.geometry is None
            else "no instance masks"
            if insts is None
            else "no instances"
            if not insts
            else None
        )
        if reason:
            skipped[reason] += 1
            continue
        k = _document(doc, insts, ranks, cfg, sums)
        if k == 0:
            skipped["no visible instance pixels"] += 1
            continue
        used, n_inst, n_tokens = (
            used + 1,
            n_inst + k,
            n_tokens + int((doc.token_type == TokenType.IMAGE).sum()),
        )
        if cfg.max_documents is not None and used >= cfg.max_documents:
            break
    if used == 0:
        raise AnalysisInputError(
            f"no document of store {store.root} could be analysed (skipped: {dict(skipped) or 'none read'}); "
            f"do its source ids match the instance masks ({instances!r})?"
        )
    logger.info(
        "%s: coverage over %d documents, %d instances (skipped %s)", model, used, n_inst, dict(skipped)
    )
    boot = Bootstrap(cfg.bootstrap, cfg.confidence, cfg.seed)
    curves, auc, contrasts = coverage_tables(sums, ks, model, cfg.seeds, boot)
    inputs = pd.DataFrame(
        [
            {
                "model": model,
                "store": str(store.root),
                "sae": loaded.name,
                "documents_used": used,
                "instances": n_inst,
                "image_tokens": n_tokens,
                **{f"skipped: {k}": v for k, v in sorted(skipped.items())},
            }
        ]
    )
    return CoverageResult(curves, auc, inputs, contrasts)


def combine(results: list[CoverageResult]) -> CoverageResult:
    """Stack the tables of several runs (e.g. trained and control)."""
    return CoverageResult(
        pd.concat([r.curves for r in results], ignore_index=True),
        pd.concat([r.auc for r in results], ignore_index=True),
        pd.concat([r.inputs for r in results], ignore_index=True),
        pd.concat([r.contrasts for r in results], ignore_index=True),
    )


def coverage_with_controls(
    store: ActivationStore | str,
    sae,
    instances: InstanceIndex,
    config: CoverageConfig | None = None,
    *,
    control_store: ActivationStore | str | None = None,
    control_sae=None,
) -> CoverageResult:
    """The analysis on the trained backbone's store and, when given, on the random-init control's store + SAE.

    The random-token baseline is part of each model's tables (ranking "random").
    """
    if (control_store is None) != (control_sae is None):
        raise AnalysisInputError(
            "the control needs both a store (--control-store) and an SAE (--control-sae)"
        )
    results = [instance_coverage(store, sae, instances, config, model="trained")]
    if control_store is not None:
        results.append(instance_coverage(control_store, control_sae, instances, config, model="control"))
    return combine(results)
