"""Sparsity by token type: L0, activation mass and distinct atoms per kind of token, with bootstrap CIs.

Groups are the store's token types, with image tokens split by what lies under their cell when instance
masks are given: `image_instance` (at least `instance_fraction` of the cell's pixels belong to instances),
`image_background` (no instance pixel), `image_mixed` (in between); `image` when a document has no masks.
Means are exact over every token; their CIs resample documents (cluster bootstrap); the distributions
plotted come from a uniform, seeded reservoir of at most `max_samples` tokens per group, so memory stays
bounded however large the store.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.common.activity import ActivityStream, DocumentMeta
from analysis.common.inputs import AnalysisInputError, check_compatible, load_sae, open_store
from analysis.common.instances import InstanceIndex
from analysis.common.stats import bootstrap_ratio_ci, bootstrap_ratio_diff_ci
from sae.store import ActivationStore
from sae.token_types import TokenType

logger = logging.getLogger(__name__)

IMAGE_GROUPS = ("image_instance", "image_mixed", "image_background", "image")
GROUPS = ("special", *IMAGE_GROUPS, "instruction", "cot", "concentration", "response")
"""Token groups in report order."""
_TYPE_GROUP = np.array([GROUPS.index(t.name.lower()) if t.name.lower() in GROUPS else -1 for t in TokenType])
"""Group index of each `TokenType` value (−1: padding)."""


@dataclass
class SparsityConfig:
    """Parameters of the sparsity-by-token-type analysis."""

    threshold: float = 0.0
    """An atom is active on a token when its activation is above this."""
    instance_fraction: float = 0.5
    """An image token is an instance token when at least this fraction of its cell lies on instances."""
    max_documents: int | None = None
    """Analyse at most this many documents (None: all)."""
    bootstrap: int = 1000
    """Bootstrap resamples (of documents) for the confidence intervals."""
    confidence: float = 0.95
    """Confidence level of the intervals."""
    seed: int = 0
    """Seed of the bootstrap and of the distribution reservoir."""
    max_samples: int = 20000
    """Tokens per group kept (uniformly at random) for the distribution plots."""
    chunk_elements: int = 1 << 24
    """Most SAE activations (tokens × d_sae) held in memory at once."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class SparsityResult:
    """Per-group summaries, sampled per-token values and what went in."""

    summary: pd.DataFrame
    """model, group, tokens, documents, mean_l0 (+ ci), mean_mass (+ ci), zero_l0_fraction, distinct_atoms,
    distinct_fraction (of d_sae)."""
    samples: pd.DataFrame
    """model, group, l0, mass: a uniform sample of at most `max_samples` tokens per group."""
    inputs: pd.DataFrame
    """model, store, sae, documents, tokens, documents without masks."""
    contrasts: pd.DataFrame
    """model, measure (mean_l0 / mean_mass), contrast ("image_instance − image_background"), difference with
    its CI (documents resampled together, so the two means are paired), documents (`CONTRAST_COLUMNS`)."""


CONTRASTS = (("image_instance", "image_background"),)
"""Group pairs compared per model (first − second)."""
CONTRAST_COLUMNS = ["model", "measure", "contrast", "difference", "ci_low", "ci_high", "documents"]


def _contrasts(
    per_doc: dict[int, list[tuple[int, int, float, float, int]]], model: str, cfg: SparsityConfig
) -> pd.DataFrame:
    """Mean L0 and mass of group a − group b per `CONTRASTS` pair, paired by document, with CIs."""
    rows = []
    for a, b in CONTRASTS:
        ga, gb = GROUPS.index(a), GROUPS.index(b)
        if ga not in per_doc or gb not in per_doc:
            continue
        docs = sorted({e[0] for e in per_doc[ga]} | {e[0] for e in per_doc[gb]})
        at = {g: {e[0]: e[1:] for e in per_doc[g]} for g in (ga, gb)}
        zero = (0, 0.0, 0.0, 0)
        arr = {g: np.array([at[g].get(d, zero) for d in docs], dtype=np.float64) for g in (ga, gb)}
        for measure, col in (("mean_l0", 1), ("mean_mass", 2)):
            ci = bootstrap_ratio_diff_ci(
                arr[ga][:, col],
                arr[ga][:, 0],
                arr[gb][:, col],
                arr[gb][:, 0],
                n_boot=cfg.bootstrap,
                confidence=cfg.confidence,
                seed=cfg.seed,
            )
            rows.append(
                {
                    "model": model,
                    "measure": measure,
                    "contrast": f"{a} − {b}",
                    "difference": ci.estimate,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "documents": len(docs),
                }
            )
    return pd.DataFrame(rows, columns=CONTRAST_COLUMNS)


def image_token_groups(
    meta: DocumentMeta, image_rc: np.ndarray, instances: InstanceIndex | None, instance_fraction: float
) -> np.ndarray:
    """Group index of each image token (rows of `image_rc`) by the instance pixels under its cell."""
    insts = instances.get(meta.source_id) if instances is not None else None
    if meta.geometry is None or insts is None:
        return np.full(len(image_rc), GROUPS.index("image"))
    geom = meta.geometry
    imap = geom.token_index_map()
    union = np.zeros(imap.shape, dtype=bool)
    for inst in insts:
        if inst.size != tuple(geom.original_size):
            raise AnalysisInputError(
                f"document {meta.doc_id} ({meta.source_id}): instance {inst.id}'s mask is {inst.size}, "
                f"the captured image is {tuple(geom.original_size)}"
            )
        union |= inst.mask()
    valid = imap >= 0
    cell = np.bincount(imap[valid], minlength=geom.num_tokens)
    on = np.bincount(imap[valid & union], minlength=geom.num_tokens)
    frac = on / np.maximum(cell, 1)
    idx = image_rc[:, 0].astype(np.int64) * geom.grid[1] + image_rc[:, 1].astype(np.int64)
    f = frac[idx]
    out = np.full(len(idx), GROUPS.index("image_mixed"))
    out[f >= instance_fraction] = GROUPS.index("image_instance")
    out[f == 0] = GROUPS.index("image_background")
    return out


class _Reservoir:
    """A uniform sample without replacement of at most `size` rows: the rows with the smallest random keys."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.keys = np.zeros(0)
        self.rows = np.zeros((0, 2))

    def add(self, rows: np.ndarray) -> None:
        self.keys = np.concatenate([self.keys, self.rng.random(len(rows))])
        self.rows = np.concatenate([self.rows, rows])
        if len(self.keys) > 2 * self.size:
            self._compact()

    def _compact(self) -> None:
        if len(self.keys) > self.size:
            keep = np.argpartition(self.keys, self.size)[: self.size]
            self.keys, self.rows = self.keys[keep], self.rows[keep]

    def values(self) -> np.ndarray:
        self._compact()
        return self.rows


def sparsity_by_token_type(
    store: ActivationStore | str,
    sae,
    instances: InstanceIndex | None = None,
    config: SparsityConfig | None = None,
    *,
    model: str = "trained",
) -> SparsityResult:
    """L0, mass and distinct atoms per token group of one store + SAE (sae-lens SAE, folder or LoadedSAE)."""
    cfg = config or SparsityConfig()
    store = open_store(store)
    loaded = load_sae(sae)
    check_compatible(loaded, store)
    missing = defaultdict(int)

    def labeller(meta: DocumentMeta, tt: np.ndarray, rc: np.ndarray) -> np.ndarray:
        groups = _TYPE_GROUP[tt.astype(np.int64)]
        img = tt == TokenType.IMAGE
        if img.any():
            if instances is not None and meta.source_id not in instances:
                missing["documents without masks"] += 1
            groups[img] = image_token_groups(meta, rc[img], instances, cfg.instance_fraction)
        return groups

    stream = ActivityStream(
        store,
        loaded,
        threshold=cfg.threshold,
        max_documents=cfg.max_documents,
        labeller=labeller,
        num_groups=len(GROUPS),
        chunk_elements=cfg.chunk_elements,
        progress=cfg.progress,
        desc=f"sparsity ({model})",
    )
    rng = np.random.default_rng(cfg.seed)
    per_doc: dict[int, list[tuple[int, int, float, float, int]]] = defaultdict(list)
    reservoirs = {g: _Reservoir(cfg.max_samples, rng) for g in range(len(GROUPS))}
    docs = tokens = 0
    for doc in stream:
        docs += 1
        tokens += len(doc.l0)
        for g in np.unique(doc.group[doc.group >= 0]):
            sel = doc.group == g
            l0, mass = doc.l0[sel], doc.mass[sel]
            per_doc[int(g)].append(
                (docs, int(sel.sum()), float(l0.sum()), float(mass.sum()), int((l0 == 0).sum()))
            )
            reservoirs[int(g)].add(np.stack([l0, mass], 1))
    if docs == 0 or not per_doc:
        raise AnalysisInputError(f"no tokens selected from store {store.root}")
    rows, samples = [], []
    for g, entries in sorted(per_doc.items()):
        _, n, s_l0, s_mass, zeros = (np.array(c, dtype=np.float64) for c in zip(*entries, strict=True))
        kw = {"n_boot": cfg.bootstrap, "confidence": cfg.confidence, "seed": cfg.seed}
        ci_l0, ci_mass = bootstrap_ratio_ci(s_l0, n, **kw), bootstrap_ratio_ci(s_mass, n, **kw)
        used = int(stream.used_atoms[g].sum())
        rows.append(
            {
                "model": model,
                "group": GROUPS[g],
                "tokens": int(n.sum()),
                "documents": len(entries),
                "mean_l0": ci_l0.estimate,
                "l0_ci_low": ci_l0.low,
                "l0_ci_high": ci_l0.high,
                "mean_mass": ci_mass.estimate,
                "mass_ci_low": ci_mass.low,
                "mass_ci_high": ci_mass.high,
                "zero_l0_fraction": float(zeros.sum() / n.sum()),
                "distinct_atoms": used,
                "distinct_fraction": used / loaded.d_sae,
            }
        )
        vals = reservoirs[g].values()
        samples.append(
            pd.DataFrame({"model": model, "group": GROUPS[g], "l0": vals[:, 0], "mass": vals[:, 1]})
        )
    inputs = pd.DataFrame(
        [
            {
                "model": model,
                "store": str(store.root),
                "sae": loaded.name,
                "documents": docs,
                "tokens": tokens,
                "d_sae": loaded.d_sae,
                **dict(missing),
            }
        ]
    )
    logger.info("%s: sparsity over %d documents, %d tokens", model, docs, tokens)
    return SparsityResult(
        pd.DataFrame(rows), pd.concat(samples, ignore_index=True), inputs, _contrasts(per_doc, model, cfg)
    )


def sparsity_with_controls(
    store: ActivationStore | str,
    sae,
    instances: InstanceIndex | None = None,
    config: SparsityConfig | None = None,
    *,
    control_store: ActivationStore | str | None = None,
    control_sae=None,
) -> SparsityResult:
    """The analysis on the trained backbone's store and, when given, on the random-init control's."""
    if (control_store is None) != (control_sae is None):
        raise AnalysisInputError(
            "the control needs both a store (--control-store) and an SAE (--control-sae)"
        )
    results = [sparsity_by_token_type(store, sae, instances, config, model="trained")]
    if control_store is not None:
        results.append(sparsity_by_token_type(control_store, control_sae, instances, config, model="control"))
    return SparsityResult(
        *(
            pd.concat(parts, ignore_index=True)
            for parts in zip(*((r.summary, r.samples, r.inputs, r.contrasts) for r in results), strict=True)
        )
    )


def box_statistics(samples: pd.DataFrame, value: str, order: list[str]) -> pd.DataFrame:
    """Per group of `order` (rows, in that order; groups without samples dropped): the quartiles of `value`
    (linear interpolation, as pandas) and Tukey's whiskers, the most extreme values within 1.5 IQR of the box.
    A box plot drawn from these carries a few numbers per group instead of every sampled token."""
    rows = {}
    for group, values in samples.groupby("group")[value]:
        q1, median, q3 = values.quantile([0.25, 0.5, 0.75]).to_numpy()
        inside = values[(values >= q1 - 1.5 * (q3 - q1)) & (values <= q3 + 1.5 * (q3 - q1))]
        rows[group] = {
            "q1": q1,
            "median": median,
            "q3": q3,
            "lowerfence": inside.min(),
            "upperfence": inside.max(),
        }
    return pd.DataFrame.from_dict(rows, orient="index").reindex([g for g in order if g in rows])


def sparsity_figure(result: SparsityResult, title: str = "SAE sparsity by token type") -> go.Figure:
    """Box plots of L0 and activation mass per group (quartiles and whiskers of the sampled tokens, drawn
    from `box_statistics`), and mean L0 with its CI."""
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("L0 (active atoms) per token", "activation mass per token", "mean L0 with 95 % CI"),
    )
    order = [g for g in GROUPS if g in set(result.summary["group"])]
    palette = {"trained": "#1f77b4", "control": "#ff7f0e"}
    for m in dict.fromkeys(result.summary["model"]):
        s = result.samples[result.samples["model"] == m]
        colour = palette.get(m, "#2ca02c")
        for col, key in ((1, "l0"), (2, "mass")):
            box = box_statistics(s, key, order)
            fig.add_trace(
                go.Box(
                    x=list(box.index),
                    **{k: box[k].to_numpy() for k in box.columns},
                    name=m,
                    legendgroup=m,
                    showlegend=col == 1,
                    marker={"color": colour},
                ),
                row=1,
                col=col,
            )
        d = result.summary[result.summary["model"] == m].set_index("group").reindex(order)
        fig.add_trace(
            go.Bar(
                x=order,
                y=d["mean_l0"],
                name=f"{m} mean L0",
                marker={"color": colour},
                showlegend=False,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": d["l0_ci_high"] - d["mean_l0"],
                    "arrayminus": d["mean_l0"] - d["l0_ci_low"],
                },
            ),
            row=1,
            col=3,
        )
    for col in (1, 2, 3):
        fig.update_xaxes(categoryorder="array", categoryarray=order, row=1, col=col)
    fig.update_layout(
        title=title, boxmode="group", barmode="group", height=460, width=1350, template="plotly_white"
    )
    return fig
