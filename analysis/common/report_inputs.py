"""What the report commands share: their input paths (SAE, store, control, instance masks), loading the
SAEs, the instance masks and the report metadata (`coverage/command.py`, `sparsity/command.py`,
`atoms/command.py`)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from analysis.common.inputs import AnalysisInputError, LoadedSAE, load_sae, open_store
from analysis.common.instances import InstanceIndex

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ReportInputs:
    """Paths shared by the report commands."""

    sae: str
    """Folder of the SAE (sae-lens format, e.g. written by `segcompass-sae train`)."""
    store: str
    """Activation store the SAE reads (`segcompass-sae capture`)."""
    out: str = "runs/analysis"
    """Folder for the HTML report and its tables (CSV, Parquet)."""
    control_store: str | None = None
    """Control: a store captured from the random-init backbone (docs/design.md §9)."""
    control_sae: str | None = None
    """Control: the SAE trained on `control_store`."""
    corpus: str | None = None
    """Instance masks: the image–text corpus folder (default: the store's data folder when it has one)."""
    coco: str | None = None
    """Instance masks: a COCO instances.json (real data sets), images keyed by file name."""
    file_map: str | None = None
    """With --coco: JSON object source_id → image file name (default: file name or its stem)."""
    device: str = "cpu"
    """Device the SAE runs on."""


def resolve_instances(cfg: ReportInputs, required: bool) -> InstanceIndex | None:
    """The instance masks named by --corpus / --coco, else the store's own corpus, else None (or an error)."""
    if cfg.corpus and cfg.coco:
        raise AnalysisInputError("give instance masks with --corpus or --coco, not both")
    if cfg.coco:
        return InstanceIndex.from_coco(cfg.coco, cfg.file_map)
    if cfg.corpus:
        return InstanceIndex.from_corpus(cfg.corpus)
    data_path = open_store(cfg.store).manifest.metadata.data.get("path")
    if data_path and (Path(data_path) / "corpus.jsonl").exists():
        logger.info("instance masks from the store's corpus %s", data_path)
        return InstanceIndex.from_corpus(data_path)
    if required:
        raise AnalysisInputError(
            f"no instance masks: the store's data ({data_path}) has no corpus.jsonl; pass --corpus or --coco"
        )
    return None


def load_report_saes(cfg: ReportInputs) -> tuple[LoadedSAE, LoadedSAE | None]:
    for name in ("sae", "store"):
        if not getattr(cfg, name):
            raise AnalysisInputError(f"--{name} is required")
    if (cfg.control_store is None) != (cfg.control_sae is None):
        raise AnalysisInputError("the control needs both --control-store and --control-sae")
    control = load_sae(cfg.control_sae, cfg.device) if cfg.control_sae else None
    return load_sae(cfg.sae, cfg.device), control


def report_metadata(cfg: Any, sae: LoadedSAE, control: LoadedSAE | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"config": asdict(cfg)}
    for key, store, loaded in (("trained", cfg.store, sae), ("control", cfg.control_store, control)):
        if store is None or loaded is None:
            continue
        m = open_store(store).manifest
        meta[key] = {
            "store": str(store),
            "store_id": m.store_id,
            "backbone": m.backbone,
            "hook_layer": m.hook_layer,
            "d_in": m.metadata.d_in,
            "documents": m.num_documents,
            "tokens": m.num_tokens,
            "sae": loaded.name,
            "d_sae": loaded.d_sae,
            "sae_metadata": loaded.metadata,
        }
    return meta
