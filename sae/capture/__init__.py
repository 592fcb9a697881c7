"""Activation capture: backbone hook-layer states over image–text documents → activation store."""

from .backends import (
    BACKENDS,
    CaptureBackend,
    GeneratedStates,
    NnsightBackend,
    TransformerLensBackend,
    make_backend,
)
from .runner import CaptureConfig, CaptureResult, label_generated, run_capture
from .sources import DocumentSource, SourceDocument, SourceError, open_source

__all__ = [
    "BACKENDS",
    "CaptureBackend",
    "CaptureConfig",
    "CaptureResult",
    "DocumentSource",
    "GeneratedStates",
    "NnsightBackend",
    "SourceDocument",
    "SourceError",
    "TransformerLensBackend",
    "label_generated",
    "make_backend",
    "open_source",
    "run_capture",
]
