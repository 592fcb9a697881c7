"""`segcompass-analyze provenance`: slot provenance, atom attribution and its causal check for a trained
model, as an HTML report plus tables.

The model is loaded lazily with `segcompass.model.load_model(path)`. What the command needs from it
(`ProvenanceModel`): the head as `.head` and `.head_inputs(samples) -> HeadInputs` — the policy's greedy
rollout on a batch of `RefSample`s turned into the head's inputs (hook-layer states, concentration states,
SAM embeddings), with token labels, images, GT targets and sample ids for display.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from tqdm.auto import tqdm

from analysis.attribution.causal import CausalConfig, causal_check
from analysis.attribution.causal_summary import causal_headline
from analysis.attribution.core import AttributionConfig, attribute
from analysis.attribution.head_inputs import HeadInputs
from analysis.common.inputs import AnalysisInputError
from analysis.provenance.report import ProvenanceRecord, provenance_report
from analysis.report.html import ReportFiles
from sae.files import lock_output

logger = logging.getLogger(__name__)


@runtime_checkable
class ProvenanceModel(Protocol):
    """What `segcompass.model.load_model` must return for this command."""

    head: Any
    """The `SegCompassHead`."""

    def head_inputs(self, samples: Sequence[Any]) -> HeadInputs:
        """Greedy rollout of the policy on `samples` (`RefSample`s) → the head's inputs for them."""
        ...


@dataclass(kw_only=True)
class ProvenanceReportConfig:
    """Slot provenance of a trained SegCompass model: for each sample, every slot's heatmap and mask, the
    atoms that drove it (activation × gradient through the codebook path, and the aggregator's attention),
    the text tokens and image patches where they fired, and a causal check (removing the top-attributed
    atoms vs as many random atoms). Writes an HTML report and tables (CSV, Parquet)."""

    checkpoint: str
    """Folder of the trained model, loaded with `segcompass.model.load_model`."""
    dataset: str
    """Registered data set name (segcompass.data: refcoco, refcoco+, refcocog, grefcoco, reasonseg, hf_rows,
    or one of your own)."""
    data_args: str = "{}"
    """JSON object of the data set's keyword arguments, e.g. '{"root": "data/reasonseg", "split": "val"}'."""
    samples: int = 8
    """Report the first this-many samples of the data set."""
    batch_size: int = 4
    """Samples per model forward."""
    out: str = "runs/analysis"
    """Folder for the HTML report and its tables."""
    objective: Literal["mask", "heatmap", "confidence"] = "mask"
    """Slot objective attributed (see `AttributionConfig.objective`)."""
    rank_by: Literal["abs", "signed"] = "abs"
    """Rank atoms by |act × grad| or by its signed value."""
    top: int = 10
    """Atoms shown per slot."""
    causal: bool = True
    """Run the causal check (top-attributed vs random atoms removed from the support)."""
    n_atoms: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    """Numbers of atoms removed in the causal check."""
    seeds: int = 5
    """Random draws per (sample, slot, n) in the causal check."""
    seed: int = 0
    """Seed of the random draws and the bootstrap."""
    progress: bool = True
    """Show progress bars."""


def load_trained_model(checkpoint: str | Path) -> ProvenanceModel:
    """`segcompass.model.load_model(checkpoint)`, checked against `ProvenanceModel`; clear errors when
    the folder or the model's interface is missing."""
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    from segcompass.model import load_model  # heavy: the backbone's code, only when a checkpoint is read

    model = load_model(path)
    if not isinstance(model, ProvenanceModel) and hasattr(model, "policy") and hasattr(model, "head"):
        from analysis.provenance.model_inputs import TrainedModelInputs

        model = TrainedModelInputs(model)  # a segcompass.model.SegCompassModel
    if not isinstance(model, ProvenanceModel):
        raise AnalysisInputError(
            f"the model loaded from {path} ({type(model).__name__}) lacks .head / .head_inputs(samples), which "
            "the provenance report needs"
        )
    return model


def load_samples(cfg: ProvenanceReportConfig) -> list[Any]:
    """The first `cfg.samples` samples of the named data set."""
    from segcompass.data import build_dataset

    try:
        kwargs = json.loads(cfg.data_args)
    except json.JSONDecodeError as err:
        raise AnalysisInputError(f"--data-args is not valid JSON: {err}") from err
    if not isinstance(kwargs, dict):
        raise AnalysisInputError(f"--data-args must be a JSON object, got {cfg.data_args!r}")
    try:
        ds = build_dataset(cfg.dataset, **kwargs)
    except KeyError as err:
        raise AnalysisInputError(str(err.args[0] if err.args else err)) from err
    samples = [ds[i] for i in range(min(cfg.samples, len(ds)))]
    if not samples:
        raise AnalysisInputError(f"no samples selected from data set {cfg.dataset!r} ({len(ds)} samples)")
    return samples


def run_provenance_report(
    cfg: ProvenanceReportConfig, model: ProvenanceModel | None = None
) -> tuple[list[ProvenanceRecord], ReportFiles]:
    """Attribute (and causally check) every batch and write `<out>/provenance.html` + tables."""
    if cfg.samples < 1 or cfg.batch_size < 1 or cfg.top < 1:
        raise AnalysisInputError("--samples, --batch-size and --top must be at least 1")
    model = model if model is not None else load_trained_model(cfg.checkpoint)
    samples = load_samples(cfg)
    head = model.head.eval()
    att_cfg = AttributionConfig(objective=cfg.objective, rank_by=cfg.rank_by)
    causal_cfg = CausalConfig(n_atoms=tuple(cfg.n_atoms), seeds=cfg.seeds, seed=cfg.seed, progress=False)
    records = []
    starts = range(0, len(samples), cfg.batch_size)
    for start in tqdm(starts, desc="provenance", unit="batch", disable=not cfg.progress):
        inputs = model.head_inputs(samples[start : start + cfg.batch_size])
        if not isinstance(inputs, HeadInputs):
            raise TypeError(f"head_inputs returned {type(inputs).__name__}, expected analysis.HeadInputs")
        att = attribute(head, inputs, att_cfg)
        checked = causal_check(head, inputs, att, causal_cfg) if cfg.causal else None
        records.append(ProvenanceRecord(inputs, att.reference, att, checked))
    meta = {
        "config": asdict(cfg),
        "samples": [getattr(s, "sample_id", str(i)) for i, s in enumerate(samples)],
    }
    files = provenance_report(records, cfg.out, top=cfg.top, metadata=meta)
    return records, files


def provenance_main(cfg: ProvenanceReportConfig) -> list[ProvenanceRecord]:
    """CLI entry: run, print the causal headline and where the report is."""
    with lock_output(cfg.out, "provenance report"):  # checks --out before the model is run
        records, files = run_provenance_report(cfg)
    summary = [p for p in files.tables.get("causal_summary", []) if p.suffix == ".csv"]
    if summary:
        import pandas as pd

        print(causal_headline(pd.read_csv(summary[0])))
    print(f"Provenance report: {files.html.absolute()}")
    return records
