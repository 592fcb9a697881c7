"""Data sets for referring and reasoning segmentation, read from their real on-disk formats (docs/design.md §6).

Every loader is a sequence of :class:`RefSample` (image path and size, the sentence used and all
sentences, bool instance masks, ignore mask, no-target flag, split, source) and counts everything it
leaves out in ``skipped`` (and what it keeps but reports in ``notes``); ``report()`` logs both.

- :class:`RefCocoDataset` — RefCOCO / RefCOCO+ / RefCOCOg refs (JSON, or a pickle passed explicitly as
  ``refs_pickle=``; :func:`convert_refer_pickle` converts once) + ``instances.json`` + images.
- :class:`GRefCocoDataset` — gRefCOCO ``grefs(unc).json`` (multi- and no-target) and the synthetic world's
  ``write_refcoco_style`` output.
- :class:`ReasonSegDataset` — ReasonSeg folders (target/ignore polygons) and the world's
  ``write_reasonseg_style`` output.
- :class:`HFRowsDataset` — RefCOCO-family rows in the Hugging Face Parquet/JSON-lines layout.
- :func:`register_dataset` / :func:`build_dataset` — plug in your own.

GT masks for the head (longest side 1024, padded, 256²): ``RefSample.sam_targets()``, which reuses
``segcompass.head.preprocess.preprocess_masks``.
"""

from segcompass.data.base import RefDataset, check_split
from segcompass.data.geometry import check_segmentation, decode_segmentation, fill_polygon
from segcompass.data.grefcoco import GRefCocoDataset
from segcompass.data.hf_rows import HFRowsDataset
from segcompass.data.reasonseg import ReasonSegDataset
from segcompass.data.refer import REFER_SPLITS, RefCocoDataset, convert_refer_pickle, load_refer_pickle
from segcompass.data.registry import available_datasets, build_dataset, register_dataset
from segcompass.data.sample import (
    DatasetFormatError,
    InvalidGeometryError,
    MissingImageError,
    RefSample,
    UnknownSplitError,
)

__all__ = [
    "REFER_SPLITS",
    "DatasetFormatError",
    "GRefCocoDataset",
    "HFRowsDataset",
    "InvalidGeometryError",
    "MissingImageError",
    "ReasonSegDataset",
    "RefCocoDataset",
    "RefDataset",
    "RefSample",
    "UnknownSplitError",
    "available_datasets",
    "build_dataset",
    "check_segmentation",
    "check_split",
    "convert_refer_pickle",
    "decode_segmentation",
    "fill_polygon",
    "load_refer_pickle",
    "register_dataset",
]
