"""`segcompass-analyze atoms`: atom naming of a store + SAE (and its random-init control) as an HTML report.

Writes `<out>/atoms.html` (summary, label consistency vs the shuffled-label baseline and the control, one
card per chosen atom) and the tables `atoms_table`, `atoms_examples`, `atoms_consistency`,
`atoms_shuffled` and `atoms_inputs` as CSV and Parquet, each file atomically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.atoms.cards import CARD_ORDERS, ImageSource, consistency_figure, select_card_atoms
from analysis.atoms.dashboard import CARD_STYLE, atom_dashboard
from analysis.atoms.examples import resolve_tokenizer
from analysis.atoms.naming import (
    NamingConfig,
    NamingResult,
    atom_table,
    consistency_summary,
    naming_with_controls,
)
from analysis.atoms.verdict import atoms_verdict
from analysis.common.inputs import AnalysisInputError, open_store
from analysis.common.report_inputs import ReportInputs, load_report_saes, report_metadata, resolve_instances
from analysis.report.html import ReportFiles, Section, write_report
from sae.files import lock_output

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class AtomsReportConfig(NamingConfig, ReportInputs):
    """Atom naming: each atom's max-activating tokens and image patches, an offline label (the synthetic
    world's colour / shape / background under its top patches, or the most frequent word at its top tokens)
    with its purity, and a consistency score on held-out documents (ROC-AUC, precision, recall of "label
    present → atom fires") beside a shuffled-label baseline and the random-init control. Writes an HTML
    report with atom cards and the tables (CSV, Parquet)."""

    cards: int = 12
    """Number of atom cards in the report (top atoms by --cards-by)."""
    cards_by: str = "consistency"
    """Which atoms get cards: consistency (held-out AUC), frequency, purity, or atoms (the first named)."""
    card_atoms: list[int] = field(default_factory=list)
    """Give cards to exactly these atoms (overrides --cards / --cards-by)."""
    patches_per_card: int = 8
    """Top image patches shown as crops on each card."""
    contexts_per_card: int = 10
    """Top text contexts listed on each card."""
    tokenizer: str = "auto"
    """Tokenizer for token texts: auto (from the store's backbone), none (show ids), or a folder / hub id."""
    images: str | None = None
    """Folder of the images, files named by source id (default: the corpus records' image paths)."""


def _images(cfg: AtomsReportConfig) -> ImageSource | None:
    if cfg.images:
        mapping = json.loads(Path(cfg.file_map).read_text()) if cfg.file_map else None
        return ImageSource.from_folder(cfg.images, mapping)
    corpus = cfg.corpus or open_store(cfg.store).manifest.metadata.data.get("path")
    if corpus and (Path(corpus) / "corpus.jsonl").exists():
        return ImageSource.from_corpus(corpus)
    logger.warning("no corpus or image folder: atom cards show patch locations without crops")
    return None


CONSISTENCY_TEXT = (
    'Each labelled atom\'s held-out ROC-AUC of "label present here → the atom fires" on documents its '
    "examples did not come from, beside the same labels permuted across atoms (what a label not derived "
    "from the atom scores: chance), per model. One point per atom."
)
CARDS_TEXT = (
    "One card per atom (top atoms by {by}): its label and held-out score, how often and how strongly it "
    "fires, its activation histogram, and its top examples — image patches as crops of the image around the "
    "token's cell and text tokens in their context (highlight: activation relative to the atom's largest)."
)


def run_atoms_report(cfg: AtomsReportConfig) -> tuple[list[NamingResult], ReportFiles]:
    """Name the atoms (and the control's) and write `<out>/atoms.html` + tables."""
    if cfg.cards_by not in CARD_ORDERS:
        raise AnalysisInputError(f"unknown --cards-by {cfg.cards_by!r}; choose from {CARD_ORDERS}")
    sae, control = load_report_saes(cfg)
    instances = resolve_instances(cfg, required=False)
    naming = NamingConfig(**{k: getattr(cfg, k) for k in NamingConfig.__dataclass_fields__})
    tokenizer = resolve_tokenizer(cfg.tokenizer, open_store(cfg.store))
    control_tok = (
        resolve_tokenizer(cfg.tokenizer, open_store(cfg.control_store)) if cfg.control_store else None
    )
    results = naming_with_controls(
        cfg.store,
        sae,
        instances,
        naming,
        tokenizer=tokenizer,
        control_store=cfg.control_store,
        control_sae=control,
        control_tokenizer=control_tok,
    )
    table = atom_table(results)
    summary = consistency_summary(results, seed=cfg.seed)
    images = _images(cfg)
    shown = table.sort_values(
        ["model", "auc", "frequency"], ascending=[False, False, False], na_position="last"
    )
    sections = [
        Section("Label consistency on held-out documents", CONSISTENCY_TEXT, consistency_figure(results))
    ]
    for i, atom in enumerate(select_card_atoms(table, cfg.cards_by, cfg.cards, cfg.card_atoms)):
        card = atom_dashboard(
            results[0], atom, images, n_patches=cfg.patches_per_card, n_contexts=cfg.contexts_per_card
        )
        sections.append(
            Section(
                card.title,
                CARDS_TEXT.format(by=cfg.cards_by) if i == 0 else "",
                card.histogram,
                html=(CARD_STYLE if i == 0 else "") + card.html,
                layout="side",
            )
        )
    inputs = pd.concat([r.inputs for r in results], ignore_index=True)
    sections += [
        Section("Label consistency per model and modality", table=summary),
        Section("Atoms (labelled first, by held-out AUC)", table=shown, max_rows=80, collapsed=True),
        Section("Inputs", table=inputs),
    ]
    tables = {
        "table": table,
        "examples": pd.concat([r.examples for r in results], ignore_index=True),
        "consistency": summary,
        "shuffled": pd.concat([r.shuffled for r in results], ignore_index=True),
        "inputs": inputs,
    }
    files = write_report(
        cfg.out,
        "atoms",
        "SegCompass atom naming",
        sections,
        tables,
        metadata=report_metadata(cfg, sae, control),
        verdict=atoms_verdict(summary),
    )
    return results, files


def atoms_main(cfg: AtomsReportConfig) -> list[NamingResult]:
    """CLI entry: run, print the consistency summary and where the report is."""
    with lock_output(cfg.out, "atoms report"):  # checks --out before the atoms are computed
        results, files = run_atoms_report(cfg)
    summary = consistency_summary(results, seed=cfg.seed)
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(summary.to_string(index=False) if len(summary) else "no atom could be labelled")
    print(f"\n{atoms_verdict(summary).text()}\nAtom naming report: {files.html.absolute()}")
    return results
