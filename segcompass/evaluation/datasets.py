"""Open a registered data set from a root folder in its usual layout (what `segcompass evaluate` does).

| name | files under ``root`` (override with ``refs`` / ``instances`` / ``images_dir``) |
|---|---|
| grefcoco | ``grefs(unc).json``, ``instances.json``, ``images/`` (the synthetic world's ``write_refcoco_style``) |
| refcoco, refcoco+ | ``refs(unc).json``, ``instances.json``, ``images/`` (COCO train2014) |
| refcocog | ``refs(umd).json``, ``instances.json``, ``images/`` |
| reasonseg | ``<split>/<name>.jpg`` + ``<name>.json`` |
| hf_rows | every ``*.parquet`` / ``*.jsonl`` in ``root`` (or ``refs``); image paths relative to ``root`` |
| anything else registered | ``build_dataset(name, root=root, split=split)`` |

Refer pickles are read only when named explicitly as ``refs`` (docs/design.md §6).
"""

from __future__ import annotations

from pathlib import Path

from segcompass.data import (
    GRefCocoDataset,
    HFRowsDataset,
    ReasonSegDataset,
    RefCocoDataset,
    RefDataset,
    available_datasets,
    build_dataset,
)

_REFS = {"grefcoco": "grefs(unc).json", "refcoco": "refs(unc).json", "refcoco+": "refs(unc).json",
         "refcocog": "refs(umd).json"}  # fmt: skip
_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path


def open_dataset(
    name: str,
    root: str | Path,
    split: str,
    *,
    images_dir: str | Path | None = None,
    refs: str | Path | None = None,
    instances: str | Path | None = None,
    skip_missing: bool = False,
) -> RefDataset:
    """The data set registered as ``name``, read from ``root`` in its usual layout (module docstring).

    Raises ValueError for an unknown name or split, FileNotFoundError for a missing file.
    """
    known = available_datasets()
    if name not in known:
        raise ValueError(f"unknown data set {name!r}; registered: {', '.join(known)}")
    if not str(root):
        raise ValueError("a data root is needed (--data-root)")
    root = _need(Path(root), "data root")
    if name in _REFS:
        ann = _need(Path(instances) if instances else root / "instances.json", "COCO instances file")
        imgs = _need(Path(images_dir) if images_dir else root / "images", "images folder")
        ref_path = Path(refs) if refs else root / _REFS[name]
        if not ref_path.exists():
            pickles = [p.name for p in sorted(root.glob("*.p"))]
            hint = (
                f"; {', '.join(pickles)} found: convert it once with "
                "segcompass.data.convert_refer_pickle(pickle, json), or name it with --refs to read it"
                if pickles
                else ""
            )
            raise FileNotFoundError(f"refs file {ref_path} does not exist{hint}")
        if name == "grefcoco":
            return GRefCocoDataset(ref_path, ann, imgs, split, skip_missing=skip_missing)
        pickle = ref_path.suffix.lower() in _PICKLE_SUFFIXES
        return RefCocoDataset(
            None if pickle else ref_path, ann, imgs, split, variant=name,
            refs_pickle=ref_path if pickle else None, skip_missing=skip_missing,
        )  # fmt: skip
    if name == "reasonseg":
        return ReasonSegDataset(root, split, skip_missing=skip_missing)
    if name == "hf_rows":
        files = [Path(refs)] if refs else sorted([*root.glob("*.parquet"), *root.glob("*.jsonl")])
        if not files:
            raise FileNotFoundError(f"no *.parquet or *.jsonl row files in {root} (name one with --refs)")
        return HFRowsDataset(
            files, Path(images_dir) if images_dir else root, split, skip_missing=skip_missing
        )
    return build_dataset(name, root=root, split=split)
