"""Atom naming: max-activating examples, an offline label and a held-out consistency score for every atom.

1. **Scan** (`atom_scan`): one streaming pass over the store's training documents records, per atom, its
   firing frequency, mean code, an activation histogram and its top-k rows (an exact per-atom reservoir);
   atoms are encoded in chunks, so memory is O(atoms per pass × k), never [T, d_sae].
2. **Examples** (`atom_examples`): the top rows become tokens with their text context (decoded with the
   backbone's tokenizer when available) or image patches (doc id, grid cell, pixel box).
3. **Labels** (`atom_labels`): image atoms get the synthetic world's colour / shape / "background" under
   their top patches, text atoms the most frequent word at (or around) their top tokens; purity is the
   share of top examples that agree.
4. **Consistency** (`atom_consistency`): on the store's held-out documents (its document-level val split),
   the ROC-AUC of the atom's code as a predictor of "label present at this token", with precision and recall
   at the threshold — and the same for labels permuted across atoms (the chance level).

Run it on the trained backbone's store + SAE and on the random-init control's (docs/design.md §9):
`naming_with_controls`. `atom_table` gives the per-atom table, `consistency_summary` the comparison.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.atoms.consistency import label_consistency
from analysis.atoms.examples import TokenText, lookup_examples
from analysis.atoms.labels import FACETS, PatchAttributes, label_atoms
from analysis.atoms.scan import scan_atoms
from analysis.atoms.stream import AtomEncoder
from analysis.atoms.tables import TABLE_COLUMNS, atom_table, build_table, consistency_summary
from analysis.common.inputs import (
    AnalysisInputError,
    check_compatible,
    load_sae,
    open_store,
    require_image_geometry,
)
from analysis.common.instances import InstanceIndex
from sae.store import ActivationStore
from sae.token_types import TokenType

logger = logging.getLogger(__name__)

__all__ = [
    "TABLE_COLUMNS",
    "NamingConfig",
    "NamingResult",
    "atom_table",
    "consistency_summary",
    "name_atoms",
    "naming_with_controls",
]


@dataclass
class NamingConfig:
    """Parameters of atom naming."""

    top_k: int = 20
    """Max-activating examples kept per atom (they also decide its label)."""
    threshold: float = 0.0
    """An atom fires on a token when its code is above this (frequency, examples, precision/recall)."""
    token_types: list[str] | None = None
    """Token types to read (image, instruction, cot, concentration, special, response); None: all."""
    val_fraction: float = 0.05
    """Held-out share of documents (the store's document-level val split; SAE training holds out 0.05):
    examples and labels come from the rest, consistency from these. 0: no consistency score."""
    atoms: list[int] = field(default_factory=list)
    """Name only these atoms (empty: every atom of the SAE)."""
    atom_chunk: int = 1024
    """Atoms encoded together per block of rows."""
    atoms_per_pass: int | None = None
    """Atoms per read of the store (memory O(atoms_per_pass × top_k)); None: all atoms in one pass."""
    chunk_elements: int = 1 << 22
    """Most SAE codes (rows × atoms) held in memory at once."""
    context_window: int = 4
    """Text context: tokens on each side of an example token (also the reach of "near:" labels)."""
    image_labels: bool = True
    """Label image atoms by the instances under their top patches (needs image geometry and instance masks)."""
    label_facets: list[str] = field(default_factory=lambda: ["colour", "shape"])
    """Instance attributes an image label may name, preferred in this order on equal purity
    (colour, shape, colour+shape); "background" is always a candidate."""
    min_examples: int = 3
    """Label an atom only when at least this many of its top examples can be described."""
    hist_bins: int = 96
    """Bins of each atom's activation histogram (log-spaced over [hist_min, hist_max])."""
    hist_min: float = 1e-3
    """Lower edge of the histogram bins (codes below fall in an underflow bin)."""
    hist_max: float = 1e3
    """Upper edge of the histogram bins (codes above fall in an overflow bin)."""
    auc_bins: int = 128
    """Score bins per atom for the held-out ROC-AUC (relative to the atom's largest training code)."""
    shuffles: int = 3
    """Label permutations across atoms for the shuffled-label baseline (0: none)."""
    seed: int = 0
    """Seed of the label permutations."""
    progress: bool = True
    """Show progress bars."""

    def check(self, d_sae: int) -> np.ndarray:
        """The atoms to name (int64 [A]); raises `AnalysisInputError` on a bad setting."""
        if self.top_k < 1 or self.min_examples < 1 or self.context_window < 0:
            raise AnalysisInputError(
                "top_k and min_examples must be positive and context_window non-negative"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise AnalysisInputError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if (
            self.hist_bins < 1
            or not 0 < self.hist_min < self.hist_max
            or self.auc_bins < 2
            or self.shuffles < 0
        ):
            raise AnalysisInputError(
                "need hist_bins ≥ 1, 0 < hist_min < hist_max, auc_bins ≥ 2, shuffles ≥ 0"
            )
        bad = [f for f in self.label_facets if f not in FACETS]
        if bad:
            raise AnalysisInputError(f"unknown label facets {bad}; choose from {FACETS}")
        atoms = np.asarray(self.atoms if self.atoms else np.arange(d_sae), dtype=np.int64)
        if atoms.size == 0:
            raise AnalysisInputError("no atoms selected")
        if (atoms < 0).any() or (atoms >= d_sae).any():
            raise AnalysisInputError(
                f"atom indices must lie in [0, {d_sae}); got {sorted(set(self.atoms))[:10]}"
            )
        return np.unique(atoms) if self.atoms else atoms


@dataclass
class NamingResult:
    """Atom naming of one store + SAE (A atoms)."""

    model: str
    """"trained" or "control"."""
    table: pd.DataFrame
    """One row per atom: see `TABLE_COLUMNS` (auc / precision / recall on held-out documents)."""
    examples: pd.DataFrame
    """Top examples: model, atom, rank, activation, doc_id, source_id, position, token_id, token_type, token,
    word, image_row, image_col, x0, y0, x1, y1 (pixel box of a patch), context."""
    shuffled: pd.DataFrame
    """Shuffled-label baseline per atom and permutation: atom, shuffle, label_kind, label_value, auc, ..."""
    hist: np.ndarray
    """int64 [A, B + 2] activation histogram per atom (rows as in `table`; under- and overflow bins)."""
    hist_edges: np.ndarray
    """float64 [B + 1] bin edges of `hist`."""
    inputs: pd.DataFrame
    """model, store, sae, tokens read (train / held-out), atoms, labelled atoms, tokenizer."""


def _check_inputs(store: ActivationStore, cfg: NamingConfig, instances: InstanceIndex | None) -> bool:
    """Raise on an empty selection or missing image inputs; returns whether image labels are computed."""
    if cfg.token_types is not None and store.num_tokens(cfg.token_types) == 0:
        raise AnalysisInputError(
            f"store {store.root} has no tokens of types {cfg.token_types} (it has {store.manifest.token_type_counts})"
        )
    reads_images = cfg.token_types is None or int(TokenType.IMAGE) in {
        int(TokenType.parse(t)) for t in cfg.token_types
    }
    if not (cfg.image_labels and reads_images):
        return False
    if store.num_tokens(["image"]) == 0:
        logger.info("store %s holds no image tokens: text labels only", store.root)
        return False
    require_image_geometry(store)
    if instances is None:
        raise AnalysisInputError(
            "image labels need instance masks (pass --corpus or --coco), or turn them off (--image-labels false)"
        )
    return True


def name_atoms(
    store: ActivationStore | str,
    sae: Any,
    instances: InstanceIndex | None = None,
    config: NamingConfig | None = None,
    *,
    tokenizer: Any | None = None,
    model: str = "trained",
) -> NamingResult:
    """Examples, labels and held-out consistency of every atom of `sae` (an sae-lens SAE, a folder or a
    `LoadedSAE`) over `store`; `tokenizer` decodes token ids (a HF tokenizer, an id → text mapping or None)."""
    cfg = config or NamingConfig()
    store = open_store(store)
    loaded = load_sae(sae)
    check_compatible(loaded, store)
    atoms = cfg.check(loaded.d_sae)
    image_labels = _check_inputs(store, cfg, instances)
    encoder = AtomEncoder(loaded)
    common = dict(
        threshold=cfg.threshold,
        token_types=cfg.token_types,
        val_fraction=cfg.val_fraction,
        atom_chunk=cfg.atom_chunk,
        atoms_per_pass=cfg.atoms_per_pass,
        chunk_elements=cfg.chunk_elements,
        progress=cfg.progress,
    )
    edges = np.logspace(np.log10(cfg.hist_min), np.log10(cfg.hist_max), cfg.hist_bins + 1)
    split = "train" if cfg.val_fraction > 0 else "all"
    scan = scan_atoms(
        store,
        encoder,
        atoms,
        top_k=cfg.top_k,
        split=split,
        hist_edges=edges,
        desc=f"atom scan ({model})",
        **common,
    )
    text = TokenText(tokenizer)
    examples = lookup_examples(store, scan, threshold=cfg.threshold, window=cfg.context_window, text=text)
    attributes = PatchAttributes(instances)
    labels = label_atoms(
        examples,
        scan.atoms,
        attributes,
        facets=cfg.label_facets,
        image_labels=image_labels,
        min_examples=cfg.min_examples,
        window=cfg.context_window,
        text=text,
        documents=examples.documents,
    )
    labelled = labels[labels["label"].notna()].reset_index(drop=True)
    position = {a: i for i, a in enumerate(scan.atoms.tolist())}
    val_tokens = 0
    if cfg.val_fraction > 0 and len(labelled):
        scale = scan.top_values[[position[a] for a in labelled["atom"]], 0].astype(np.float64)
        cons = label_consistency(
            store,
            encoder,
            labelled,
            scale,
            attributes,
            text,
            window=cfg.context_window,
            auc_bins=cfg.auc_bins,
            shuffles=cfg.shuffles,
            seed=cfg.seed,
            desc=f"label consistency ({model})",
            **common,
        )
        per_atom, shuffled, val_tokens = cons.per_atom, cons.shuffled, cons.val_tokens
    else:
        if cfg.val_fraction == 0:
            logger.warning("%s: val_fraction 0, so labels are not tested on held-out documents", model)
        per_atom, shuffled = pd.DataFrame({"atom": pd.Series(dtype=np.int64)}), pd.DataFrame()
    table = build_table(model, scan, labels, per_atom)
    logger.info(
        "%s: %d atoms, %d fire, %d labelled; held-out tokens %d",
        model,
        len(table),
        int((scan.active > 0).sum()),
        len(labelled),
        val_tokens,
    )
    inputs = pd.DataFrame(
        [
            {
                "model": model,
                "store": str(store.root),
                "sae": loaded.name,
                "tokens_scanned": scan.tokens,
                "tokens_held_out": val_tokens,
                "atoms": len(table),
                "atoms_firing": int((scan.active > 0).sum()),
                "atoms_labelled": len(labelled),
                "tokenizer": type(tokenizer).__name__ if tokenizer is not None else "none",
                "token_types": ",".join(cfg.token_types) if cfg.token_types else "all",
                "val_fraction": cfg.val_fraction,
                "image_labels": image_labels,
            }
        ]
    )
    ex = examples.table.drop(columns=["row_id"])
    ex.insert(0, "model", model)
    if len(shuffled):
        shuffled.insert(0, "model", model)
    return NamingResult(model, table, ex, shuffled, scan.hist, scan.hist_edges, inputs)


def naming_with_controls(
    store: ActivationStore | str,
    sae: Any,
    instances: InstanceIndex | None = None,
    config: NamingConfig | None = None,
    *,
    tokenizer: Any | None = None,
    control_store: ActivationStore | str | None = None,
    control_sae: Any | None = None,
    control_tokenizer: Any | None = None,
) -> list[NamingResult]:
    """`name_atoms` on the trained backbone's store + SAE and, when given, on the random-init control's."""
    if (control_store is None) != (control_sae is None):
        raise AnalysisInputError(
            "the control needs both a store (--control-store) and an SAE (--control-sae)"
        )
    results = [name_atoms(store, sae, instances, config, tokenizer=tokenizer, model="trained")]
    if control_store is not None:
        tok = control_tokenizer if control_tokenizer is not None else tokenizer
        results.append(
            name_atoms(control_store, control_sae, instances, config, tokenizer=tok, model="control")
        )
    return results
