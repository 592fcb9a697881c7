"""Self-contained HTML reports (plotly.js inlined once, no network needed) plus their tables, published as
one unit.

A report `<name>` written into `<out>` is the folder `<out>/<name>/` holding the page `<name>.html` and
its tables `<name>_<table>.csv` / `.parquet`; `<out>/<name>.html` links to the page. The folder is a link
to a hidden version (`sae.files.publish`): a new report is written and fsynced in full beside the old one
and swapped in with one atomic rename, so a reader (or a run interrupted by Ctrl-C or kill -9) sees the
previous report or the new one — never new tables beside an old page — and no temporary files stay
behind. The output folder is locked while a report is written (another run into it is refused).
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from sae.files import atomic_write, lock_output
from sae.files.publish import replace_link, versioned_folder

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


def write_table(df: pd.DataFrame, stem: Path, formats: Sequence[str] = TABLE_FORMATS) -> list[Path]:
    """Write `df` as `<stem>.csv` / `<stem>.parquet`, each atomically."""
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "csv":
            atomic_write(path, lambda p: df.to_csv(p, index=False))
        elif fmt == "parquet":
            atomic_write(path, lambda p: df.to_parquet(p, index=False))
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
    """Publish `<out_dir>/<name>/` (`<name>.html` + `<name>_<table>.{csv,parquet}`) as one unit and link
    `<out_dir>/<name>.html` to its page (see the module docstring); returns the paths through the links."""
    out = Path(out_dir)
    page = render_html(title, sections, metadata)  # built in memory before anything is written
    tables = tables or {}
    with lock_output(out, f"{name} report"):
        with versioned_folder(out, name) as version:
            for key, df in tables.items():
                write_table(df, version / f"{name}_{key}", formats)
            (version / f"{name}.html").write_text(page, encoding="utf-8")
        for key in tables:  # the same tables in the flat layout of earlier versions would now be stale
            for fmt in formats:
                flat = out / f"{name}_{key}.{fmt}"
                if flat.is_file() and not flat.is_symlink():
                    flat.unlink()
        replace_link(out / f"{name}.html", f"{name}/{name}.html")
    files = ReportFiles(out / f"{name}.html")
    for key in tables:
        files.tables[key] = [out / name / f"{name}_{key}.{fmt}" for fmt in formats]
    logger.info("report written to %s", files.html)
    return files
