"""Inputs of the analyses: loading an SAE, checking it against a store, and clear errors for bad input."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae.files import read_json
from sae.store import ActivationStore

logger = logging.getLogger(__name__)

SAE_METADATA_FILE = "segcompass_sae.json"
"""What `segcompass-sae train` writes beside a finished SAE (sae/saved.py)."""


class AnalysisInputError(ValueError):
    """Input an analysis cannot use: an SAE that does not fit the store, no image geometry, nothing selected."""


@dataclass
class LoadedSAE:
    """An sae-lens SAE with what is known about the activations it was trained on."""

    sae: Any
    """The sae-lens SAE (anything with `.encode(x)` and `.cfg.d_in` / `.cfg.d_sae`)."""
    path: str | None = None
    """Folder it was loaded from, or None for an in-memory SAE."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """`segcompass_sae.json` (backbone, hook_layer, d_in, store_id, ...) or {} when absent."""

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def name(self) -> str:
        return self.path or type(self.sae).__name__


def load_sae(sae: Any, device: str = "cpu") -> LoadedSAE:
    """An SAE object (returned as is), a `LoadedSAE`, or a folder read with `sae_lens.SAE.load_from_disk`."""
    if isinstance(sae, LoadedSAE):
        return sae
    if not isinstance(sae, str | os.PathLike):
        if not hasattr(sae, "encode") or not hasattr(sae, "cfg"):
            raise AnalysisInputError(f"{type(sae).__name__} is not an SAE (it needs .encode and .cfg)")
        return LoadedSAE(sae)
    path = Path(sae)
    if not (path / "cfg.json").exists():
        raise FileNotFoundError(f"{path} holds no sae-lens SAE (no cfg.json)")
    from sae_lens import SAE

    try:
        model = SAE.load_from_disk(str(path), device=device)
    except (ValueError, KeyError, OSError) as err:  # JSON, config and safetensors errors name no file
        raise AnalysisInputError(
            f"the SAE in {path} cannot be loaded ({type(err).__name__}: {err}); its files are damaged or "
            "incomplete: train it again"
        ) from None
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise AnalysisInputError(
            f"{path / 'sae_weights.safetensors'} is damaged ({err}); train the SAE again"
        ) from None
    model.eval()
    meta_file = path / SAE_METADATA_FILE
    metadata = read_json(meta_file, "SAE metadata") if meta_file.exists() else {}
    return LoadedSAE(model, str(path), metadata)


def open_store(store: ActivationStore | str | os.PathLike) -> ActivationStore:
    """An open `ActivationStore` (given, or opened from a folder)."""
    return store if isinstance(store, ActivationStore) else ActivationStore.open(store)


def _sae_claims(loaded: LoadedSAE) -> dict[str, Any]:
    """Backbone and hook layer the SAE says it was trained on: our metadata first, then sae-lens's."""
    meta = dict(loaded.metadata)
    cfg_meta = getattr(loaded.sae.cfg, "metadata", None)
    if meta.get("backbone") is None and getattr(cfg_meta, "model_name", None):
        meta["backbone"] = cfg_meta.model_name
    if meta.get("hook_layer") is None:
        ours = getattr(cfg_meta, "segcompass", None)
        hook_name = getattr(cfg_meta, "hook_name", None)
        if isinstance(ours, dict) and ours.get("hook_layer") is not None:
            meta["hook_layer"] = ours["hook_layer"]
        elif isinstance(hook_name, str) and hook_name.startswith("hidden_states."):
            meta["hook_layer"] = int(hook_name.rsplit(".", 1)[1])
    return meta


def check_compatible(loaded: LoadedSAE, store: ActivationStore) -> None:
    """Raise `AnalysisInputError` when the SAE cannot have been trained on this store's activations.

    Checks d_in always, and the backbone and hook layer whenever the SAE records them. A different store
    id with the same backbone and layer is allowed (another capture of the same model) and only logged.
    """
    where = f"SAE {loaded.name} and store {store.root}"
    if loaded.d_in != store.d_in:
        raise AnalysisInputError(
            f"{where} do not match: the SAE reads d_in={loaded.d_in}, the store holds d_in={store.d_in}"
        )
    claims = _sae_claims(loaded)
    meta = store.manifest.metadata
    backbone = claims.get("backbone")
    if backbone is not None and backbone != meta.backbone:
        raise AnalysisInputError(
            f"{where} do not match: the SAE was trained on backbone {backbone!r}, "
            f"the store was captured from {meta.backbone!r}"
        )
    layer = claims.get("hook_layer")
    if layer is not None and int(layer) != meta.hook_layer:
        raise AnalysisInputError(
            f"{where} do not match: the SAE was trained at hook layer {layer}, "
            f"the store was captured at hook layer {meta.hook_layer}"
        )
    if claims.get("store_id") not in (None, store.store_id):
        logger.warning(
            "%s: the SAE was trained on store %s, analysing store %s (same backbone and layer)",
            where,
            claims["store_id"],
            store.store_id,
        )


def require_image_geometry(store: ActivationStore) -> None:
    """Raise unless the store holds image tokens of documents that record their image geometry."""
    if store.num_tokens(["image"]) == 0:
        raise AnalysisInputError(
            f"store {store.root} holds no image tokens (it has {store.manifest.token_type_counts}); "
            "capture image–text documents to analyse coverage"
        )
    for shard in store.manifest.shards:  # stop at the first document with a geometry
        if any(d.get("geometry") for d in store.shard_documents(shard)):
            return
    raise AnalysisInputError(
        f"store {store.root} records no image geometry for any document, so image tokens cannot be "
        "mapped to pixels; re-capture it with `segcompass-sae capture` (it stores the geometry)"
    )
