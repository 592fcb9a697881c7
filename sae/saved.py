"""The trained SAE on disk: sae-lens's format plus `segcompass_sae.json`, written atomically; loading.

An output folder holds `cfg.json` + `sae_weights.safetensors` (sae-lens's inference format, loadable with
`sae_lens.SAE.load_from_disk(folder)`), `sparsity.safetensors`, and `segcompass_sae.json`: the backbone,
hook layer, store id and manifest hash, the token types trained on with their counts, the resolved training
config, and the validation metrics. The files are written into a temporary folder, given the umask's modes,
fsynced and moved into place with `segcompass_sae.json` last: its presence marks a finished SAE, which is
never overwritten. A write that fails (a full disk) removes the temporary folder and raises a `WriteError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sae.files import apply_umask_tree, fsync_dir, fsync_file, raise_write_failure, read_json

logger = logging.getLogger(__name__)

METADATA_FILE = "segcompass_sae.json"
FORMAT = "segcompass-sae/1"


def store_description(source: Any, token_types: list[str] | None) -> dict[str, Any]:
    """What a store says about the activations (works for any `BatchSource`; missing fields are None)."""
    manifest = getattr(source, "manifest", None)
    meta = getattr(manifest, "metadata", None)
    counts = dict(getattr(manifest, "token_type_counts", {}) or {})
    selected = {
        k: v for k, v in counts.items() if token_types is None or k in {t.lower() for t in token_types}
    }
    root = getattr(source, "root", None)
    manifest_file = Path(root) / "manifest.json" if root is not None else None
    digest = None
    if manifest_file is not None and manifest_file.exists():
        digest = hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    return {
        "store_path": str(root) if root is not None else None,
        "store_id": getattr(source, "store_id", None),
        "store_manifest_sha256": digest,
        "backbone": getattr(meta, "backbone", None),
        "family": getattr(meta, "family", None),
        "revision": getattr(meta, "revision", None),
        "hook_layer": getattr(meta, "hook_layer", None),
        "store_dtype": getattr(meta, "dtype", None),
        "d_in": source.d_in,
        "token_types": token_types,
        "store_token_type_counts": counts,
        "trained_token_type_counts": selected,
    }


def annotate_sae_config(sae: Any, store: dict[str, Any]) -> None:
    """Record the backbone and hook point in the SAE's own sae-lens metadata (saved in `cfg.json`)."""
    md = sae.cfg.metadata
    md.model_name = store["backbone"]
    md.hook_name = f"hidden_states.{store['hook_layer']}" if store["hook_layer"] is not None else None
    md.segcompass = {"store_id": store["store_id"], "hook_layer": store["hook_layer"], "format": FORMAT}


def stage_final(sae: Any, out: Path, log_sparsity: torch.Tensor | None) -> Path:
    """Write the inference SAE (sae-lens format) and its sparsity into a temporary folder inside `out`."""
    out = Path(out)
    if (out / METADATA_FILE).exists():
        raise FileExistsError(
            f"{out} already holds a finished SAE ({METADATA_FILE}); it is never overwritten"
        )
    tmp = out / f".final-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        sae.save_inference_model(str(tmp))
        if log_sparsity is not None:
            save_file({"sparsity": log_sparsity.contiguous()}, tmp / "sparsity.safetensors")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_write_failure(err, out / "sae_weights.safetensors")
    return tmp


def commit_final(tmp: Path, out: Path, metadata: dict[str, Any]) -> Path:
    """Add `segcompass_sae.json` to a staged SAE and move its files into `out`, the metadata last."""
    out = Path(out)
    if (out / METADATA_FILE).exists():
        raise FileExistsError(
            f"{out} already holds a finished SAE ({METADATA_FILE}); it is never overwritten"
        )
    full = {"format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"), **metadata}
    try:
        (tmp / METADATA_FILE).write_text(json.dumps(full, indent=2, default=str))
        apply_umask_tree(tmp)  # safetensors writes 0600 whatever the umask
        names = sorted((p.name for p in tmp.iterdir()), key=lambda n: n == METADATA_FILE)
        for name in names:
            fsync_file(tmp / name)
            os.replace(tmp / name, out / name)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_write_failure(err, out / METADATA_FILE)
    tmp.rmdir()
    fsync_dir(out)
    return out


def remove_staged(out: Path) -> None:
    """Delete staging folders left by a run killed while saving its final SAE."""
    for p in Path(out).glob(".final-tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """`segcompass_sae.json` of a trained SAE folder."""
    file = Path(path) / METADATA_FILE
    if not file.exists():
        raise FileNotFoundError(f"{path} holds no finished SegCompass SAE (no {METADATA_FILE})")
    return read_json(file, "SAE metadata")


def load_sae(
    path: str | os.PathLike, device: str = "cpu", dtype: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """(sae-lens inference SAE, our metadata or {} for an SAE trained elsewhere) from a folder."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").exists():
        raise FileNotFoundError(f"{path} holds no sae-lens SAE (no cfg.json)")
    sae = SAE.load_from_disk(str(path), device=device, dtype=dtype)
    meta = read_metadata(path) if (path / METADATA_FILE).exists() else {}
    return sae, meta
