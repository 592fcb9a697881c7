"""Self-contained HTML reports (plotly.js inlined once, no network needed) plus their tables, written atomically.

Every file is written to a temporary name in the target folder, fsynced and renamed over its final name,
tables first and the HTML last, so an interrupted run leaves either the previous report or the new one —
never a half-written file (and no temporary files behind).
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

logger = logging.getLogger(__name__)

TABLE_FORMATS = ("csv", "parquet")

_ERROR_CATCHER = """<script>
window.__reportErrors = [];
function __reportError(msg) {
  window.__reportErrors.push(String(msg));
  var el = document.getElementById('report-errors');
  if (el) { el.textContent = window.__reportErrors.join('\\n'); }
}
window.addEventListener('error', function (e) { __reportError(e.message || e); });
window.addEventListener('unhandledrejection', function (e) { __reportError(e.reason); });
</script>"""
"""Records script errors in the page itself (`#report-errors`), so a headless browser's DOM shows them."""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
table.dataframe { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
table.dataframe td, table.dataframe th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
pre.meta { background: #f6f6f6; padding: 0.7em; font-size: 0.8em; overflow-x: auto; }
#report-errors { color: #b00; }
</style>"""


@dataclass
class Section:
    """One part of a report: a heading, a paragraph, and a figure and/or a table."""

    heading: str
    """Section title."""
    text: str = ""
    """Plain-text paragraph (escaped)."""
    figure: go.Figure | None = None
    """A plotly figure, embedded interactively."""
    table: pd.DataFrame | None = None
    """A table shown in the page (at most `max_rows` rows; the full table goes to the files)."""
    max_rows: int = 60
    """Rows of `table` shown in the HTML."""


@dataclass
class ReportFiles:
    """Where a report was written."""

    html: Path
    """The self-contained HTML page."""
    tables: dict[str, list[Path]] = field(default_factory=dict)
    """Per table name, its files (CSV, Parquet)."""


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a temporary sibling of `path`, fsync it, rename it over `path`; clean up on error."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table(df: pd.DataFrame, stem: Path, formats: Sequence[str] = TABLE_FORMATS) -> list[Path]:
    """Write `df` as `<stem>.csv` / `<stem>.parquet`, each atomically."""
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "csv":
            _atomic_write(path, lambda p: df.to_csv(p, index=False))
        elif fmt == "parquet":
            _atomic_write(path, lambda p: df.to_parquet(p, index=False))
        else:
            raise ValueError(f"unknown table format {fmt!r}; choose from {TABLE_FORMATS}")
        paths.append(path)
    return paths


def render_html(title: str, sections: Sequence[Section], metadata: dict[str, Any] | None = None) -> str:
    """The report page as one string: plotly.js inlined with the first figure only."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        _STYLE,
        _ERROR_CATCHER,
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {datetime.now(UTC).isoformat(timespec='seconds')}.</p>",
        '<pre id="report-errors"></pre>',
    ]
    js_included = False
    for i, sec in enumerate(sections):
        parts.append(f'<section id="section-{i}"><h2>{html.escape(sec.heading)}</h2>')
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        if sec.figure is not None:
            parts.append(
                sec.figure.to_html(
                    full_html=False,
                    include_plotlyjs=not js_included,
                    div_id=f"figure-{i}",
                    config={"responsive": True, "displaylogo": False},
                )
            )
            js_included = True
        if sec.table is not None:
            shown = sec.table.head(sec.max_rows)
            parts.append(shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""))
            if len(sec.table) > len(shown):
                parts.append(f"<p>({len(sec.table) - len(shown)} more rows in the table files.)</p>")
        parts.append("</section>")
    if metadata:
        meta = json.dumps(metadata, indent=1, default=str)
        parts.append(f'<h2>Inputs and settings</h2><pre class="meta">{html.escape(meta)}</pre>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    out_dir: str | os.PathLike,
    name: str,
    title: str,
    sections: Sequence[Section],
    tables: dict[str, pd.DataFrame] | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    formats: Sequence[str] = TABLE_FORMATS,
) -> ReportFiles:
    """Write `<out_dir>/<name>.html` and `<out_dir>/<name>_<table>.{csv,parquet}`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = render_html(title, sections, metadata)  # built in memory before anything is written
    files = ReportFiles(out / f"{name}.html")
    for key, df in (tables or {}).items():
        files.tables[key] = write_table(df, out / f"{name}_{key}", formats)
    _atomic_write(files.html, lambda p: p.write_text(page, encoding="utf-8"))
    logger.info("report written to %s", files.html)
    return files
