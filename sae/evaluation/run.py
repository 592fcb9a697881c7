"""`run_eval`: an SAE folder + an activation store (+ optionally a backbone and data) → metrics and files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sae.files import atomic_write_text

from .config import EvalConfig
from .metrics import evaluate_sae

logger = logging.getLogger(__name__)


def _check_match(sae: Any, meta: dict[str, Any], store: Any) -> None:
    if int(sae.cfg.d_in) != store.d_in:
        raise ValueError(
            f"the SAE has d_in={sae.cfg.d_in} but the store holds activations of width {store.d_in}"
        )
    mine = store.manifest.metadata
    for key, theirs in (("backbone", mine.backbone), ("hook_layer", mine.hook_layer)):
        if meta.get(key) is not None and meta[key] != theirs:
            raise ValueError(
                f"the SAE was trained on {key} {meta[key]!r} but the store holds {key} {theirs!r}"
            )


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate as `cfg` says; returns {"table": DataFrame, "ce_loss": dict | None, "written": [paths]}."""
    from sae.saved import load_sae
    from sae.store import ActivationStore

    if not cfg.sae or not cfg.store:
        raise ValueError("both --sae and --store are required")
    out = Path(cfg.out) if cfg.out else None
    files = [out / "eval.json", out / "eval.csv"] if out else []
    if not cfg.overwrite and any(f.exists() for f in files):
        raise FileExistsError(
            f"{out} already holds eval.json/eval.csv; pass --overwrite or choose another --out"
        )
    sae, meta = load_sae(cfg.sae, device=cfg.device)
    store = ActivationStore.open(cfg.store)
    _check_match(sae, meta, store)
    val_fraction = cfg.val_fraction
    if val_fraction is None:
        val_fraction = meta.get("config", {}).get("val_fraction", 0.05)
    batches = store.batches(
        cfg.batch_size, shuffle=False, token_types=cfg.token_types, split=cfg.split, val_fraction=val_fraction
    )
    result = evaluate_sae(sae, batches, max_tokens=cfg.max_tokens, dense_threshold=cfg.dense_threshold)
    ce = _ce_loss(cfg, sae) if cfg.ce_backbone else None
    report = {
        "sae": cfg.sae,
        "store": cfg.store,
        "store_id": store.store_id,
        "split": cfg.split,
        "val_fraction": val_fraction,
        **result.to_dict(),
        "ce_loss": ce,
    }
    written = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for path, text in (
            (files[0], json.dumps(report, indent=2)),
            (files[1], result.table.to_csv(index=False)),
        ):
            atomic_write_text(path, text)
            written.append(str(path))
    return {"table": result.table, "ce_loss": ce, "written": written, "report": report}


def _ce_loss(cfg: EvalConfig, sae: Any) -> dict[str, Any]:
    from sae.backbone_protocol import resolve_backbone
    from sae.capture.sources import open_source

    from .splice import ce_loss_recovered

    if not cfg.ce_data:
        raise ValueError("--ce-backbone needs --ce-data (image–text records)")
    backbone = resolve_backbone(cfg.ce_backbone)
    backbone.model.to(cfg.device)
    docs = open_source(cfg.ce_data)
    picked = [docs[i] for i in range(min(cfg.ce_documents, len(docs)))]
    result = ce_loss_recovered(
        backbone, sae, [d.image for d in picked], [d.text for d in picked], batch_size=cfg.ce_batch_size
    )
    return result.to_dict()
