"""Read what a report page shows — its verdict figures and sentence, its tables — so tests can compare the
page with the report's table files (analysis/report/verdict.py writes every figure in `data-value`)."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

_VERDICT = re.compile(r'<section id="verdict" class="verdict">(.*?)</section>', re.S)
_FIGURE = re.compile(r'<div class="figure( missing)?" data-role="(\w+)"(?: data-value="([^"]*)")?')
_SENTENCE = re.compile(r'<p class="sentence">(.*?)</p>', re.S)
_NOTE = re.compile(r"<li>(.*?)</li>", re.S)
_TABLE = re.compile(r'<table border="1" class="dataframe">.*?</table>', re.S)


@dataclass
class PageVerdict:
    """The verdict section of a report page."""

    values: dict[str, float | None]
    """data-role (headline, baseline, control) → figure; None where the box says it is missing."""
    sentence: str
    """The sentence, unescaped."""
    notes: list[str]
    """The notes, unescaped."""
    start: int
    """Where the section starts in the page."""


def page_verdict(page: str) -> PageVerdict:
    """The page's verdict; AssertionError when it has none (every report opens with one)."""
    m = _VERDICT.search(page)
    assert m is not None, "the report has no verdict section"
    body = m.group(1)
    values = {
        role: None if missing else (float(value) if value not in (None, "nan") else math.nan)
        for missing, role, value in _FIGURE.findall(body)
    }
    sentence = _SENTENCE.search(body)
    assert sentence is not None, "the verdict has no sentence"
    notes = [html.unescape(n) for n in _NOTE.findall(body)]
    return PageVerdict(values, html.unescape(sentence.group(1)), notes, m.start())


def page_tables(page: str) -> list[str]:
    """The HTML tables of the page, in order."""
    return _TABLE.findall(page)


def first_figure(page: str) -> int:
    """Where the first plotly figure starts in the page."""
    return page.index('id="figure-')
