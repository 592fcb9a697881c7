"""A small registry so that users plug their own data sets in beside the built-in ones.

::

    @register_dataset("my_set")
    def my_set(root: Path, split: str) -> RefDataset: ...

    ds = build_dataset("my_set", root=Path("data"), split="val")

A factory is any callable returning a :class:`RefDataset` (a sequence of ``RefSample`` with ``skipped``
and ``notes`` counters). Built-ins: refcoco, refcoco+, refcocog, grefcoco, reasonseg, hf_rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from segcompass.data.base import RefDataset
from segcompass.data.grefcoco import GRefCocoDataset
from segcompass.data.hf_rows import HFRowsDataset
from segcompass.data.reasonseg import ReasonSegDataset
from segcompass.data.refer import RefCocoDataset

DatasetFactory = Callable[..., RefDataset]

_REGISTRY: dict[str, DatasetFactory] = {}


def register_dataset(name: str, factory: DatasetFactory | None = None, *, overwrite: bool = False) -> Any:
    """Register ``factory`` under ``name`` (usable as a decorator); re-registering needs ``overwrite``."""

    def add(f: DatasetFactory) -> DatasetFactory:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"data set {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = f
        return f

    return add(factory) if factory is not None else add


def build_dataset(name: str, **kwargs: Any) -> RefDataset:
    """Build the data set registered as ``name`` with the factory's keyword arguments."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown data set {name!r}; registered: {', '.join(available_datasets())}")
    ds = _REGISTRY[name](**kwargs)
    if not isinstance(ds, RefDataset):
        raise TypeError(f"factory of {name!r} returned {type(ds).__name__}, not a RefDataset")
    return ds


def available_datasets() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


for _variant in ("refcoco", "refcoco+", "refcocog"):
    register_dataset(_variant, functools.partial(RefCocoDataset, variant=_variant))
register_dataset("grefcoco", GRefCocoDataset)
register_dataset("reasonseg", ReasonSegDataset)
register_dataset("hf_rows", HFRowsDataset)
