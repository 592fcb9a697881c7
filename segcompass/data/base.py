"""Base class of the loaders: a sequence of :class:`RefSample` with counted, reported skips."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence

from segcompass.data.sample import RefSample, UnknownSplitError

logger = logging.getLogger(__name__)

_WARN_EXAMPLES = 3


def check_split(split: str, valid: Sequence[str], what: str) -> None:
    """Raise :class:`UnknownSplitError` naming the valid splits when ``split`` is not one of them."""
    if split not in valid:
        raise UnknownSplitError(
            f"unknown split {split!r} for {what}; valid splits: {', '.join(valid) or 'none'}"
        )


class RefDataset(ABC):
    """A data set of referring/reasoning-segmentation samples.

    Subclasses index their files in ``__init__`` (validating everything that can be checked without
    decoding masks) and build masks lazily in ``__getitem__``. Everything left out is counted in
    ``skipped`` (reason → count) and logged; things kept but worth knowing (box-shaped parts, files kept
    as no-target) are counted in ``notes``. Nothing is dropped silently.
    """

    source: str = ""
    """Data set name written into every sample."""
    split: str = ""
    """The split loaded."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        """Reason → number of samples/parts/files left out."""
        self.notes: Counter[str] = Counter()
        """Reason → number of things kept but reported (box parts, files kept as no-target, …)."""

    def _skip(self, reason: str, key: str, detail: str = "", n: int = 1) -> None:
        """Count ``n`` things left out for ``reason`` (the first few are logged as warnings)."""
        self.skipped[reason] += n
        level = logging.WARNING if self.skipped[reason] <= _WARN_EXAMPLES else logging.DEBUG
        logger.log(level, "%s/%s: skipping %s (%s) %s", self.source, self.split, key, reason, detail)

    def _note(self, reason: str, key: str, detail: str = "") -> None:
        self.notes[reason] += 1
        logger.debug("%s/%s: %s: %s %s", self.source, self.split, key, reason, detail)

    def report(self) -> str:
        """One line with the sample count, the skips and the notes; also logged (WARNING if skips)."""
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        notes = ", ".join(f"{k}={v}" for k, v in sorted(self.notes.items())) or "none"
        line = f"{self.source}/{self.split}: {len(self)} samples; skipped: {skipped}; notes: {notes}"
        logger.log(logging.WARNING if self.skipped else logging.INFO, line)
        return line

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> RefSample: ...

    def __iter__(self) -> Iterator[RefSample]:
        for i in range(len(self)):
            yield self[i]
