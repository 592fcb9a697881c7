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
from typing import Any, Literal

import pandas as pd
import plotly.graph_objects as go

from analysis.report.verdict import Verdict, render_verdict
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
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
p.generated { color: #777; font-size: 0.85em; margin-top: -0.6em; }
table.dataframe { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
table.dataframe td, table.dataframe th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.dataframe tr:nth-child(even) { background: #f7f7f7; }
details > summary { cursor: pointer; color: #1f4e9c; margin: 0.4em 0; }
pre.meta { background: #f6f6f6; padding: 0.7em; font-size: 0.8em; overflow-x: auto; }
#report-errors { color: #b00; }
#report-errors:empty { display: none; }
div.side { display: flex; gap: 1.5em; align-items: flex-start; }
div.side-figure { flex: 0 0 auto; } div.side-html { flex: 1; min-width: 0; }
section.verdict { border: 2px solid #1f4e9c; border-radius: 8px; padding: 0.4em 1.2em 0.8em;
  background: #f4f7fc; margin: 1em 0 2em; }
section.verdict h2 { margin: 0.3em 0; }
.verdict .figures { display: flex; gap: 1em; flex-wrap: wrap; }
.verdict .figure { background: #fff; border: 1px solid #c9d3e6; border-radius: 6px; padding: 0.5em 1em;
  min-width: 14em; flex: 1; }
.verdict .figure[data-role="headline"] { border-color: #1f4e9c; border-width: 2px; flex: 1.6; }
.verdict .figure .name { font-size: 0.85em; color: #555; }
.verdict .figure .value { font-size: 2em; font-weight: 600; }
.verdict .figure.missing .value { font-size: 1.2em; color: #999; font-weight: 400; padding: 0.45em 0; }
.verdict .figure .ci { font-size: 0.9em; color: #333; }
.verdict p.sentence { font-size: 1.15em; margin: 0.8em 0 0.3em; }
.verdict ul.notes { margin: 0.3em 0; color: #333; }
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
    collapsed: bool = False
    """Show the table folded (a click opens it): for long tables a reader rarely needs."""
    html: str = ""
    """Trusted HTML built by our code (e.g. an atom card's crops and contexts), shown after the text."""
    layout: Literal["stack", "side"] = "stack"
    """stack: text, html, figure, table one below the other; side: the figure left of the html."""


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


def _table_html(sec: Section) -> str:
    shown = sec.table.head(sec.max_rows)
    parts = [shown.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")]
    if len(sec.table) > len(shown):
        parts.append(f"<p>({len(sec.table) - len(shown)} more rows in the table files.)</p>")
    body = "\n".join(parts)
    if sec.collapsed:
        return f"<details><summary>show the table ({len(sec.table)} rows)</summary>\n{body}\n</details>"
    return body


def render_html(
    title: str,
    sections: Sequence[Section],
    metadata: dict[str, Any] | None = None,
    verdict: Verdict | None = None,
) -> str:
    """The report page as one string: the verdict first (when given), then the sections in order;
    plotly.js inlined with the first figure only."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        _STYLE,
        _ERROR_CATCHER,
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="generated">Generated {datetime.now(UTC).isoformat(timespec="seconds")}.</p>',
        '<pre id="report-errors"></pre>',
    ]
    if verdict is not None:
        parts.append(render_verdict(verdict))
    js_included = False
    for i, sec in enumerate(sections):
        parts.append(f'<section id="section-{i}"><h2>{html.escape(sec.heading)}</h2>')
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        figure = ""
        if sec.figure is not None:
            figure = sec.figure.to_html(
                full_html=False,
                include_plotlyjs=not js_included,
                div_id=f"figure-{i}",
                config={"responsive": True, "displaylogo": False},
            )
            js_included = True
        if sec.layout == "side" and figure and sec.html:
            parts.append(f'<div class="side"><div class="side-figure">{figure}</div>')
            parts.append(f'<div class="side-html">{sec.html}</div></div>')
        else:
            parts += [p for p in (sec.html, figure) if p]
        if sec.table is not None:
            parts.append(_table_html(sec))
        parts.append("</section>")
    if metadata:
        meta = json.dumps(metadata, indent=1, default=str)
        parts.append(
            "<h2>Inputs and settings</h2><details><summary>show the settings and the inputs' identities"
            f'</summary><pre class="meta">{html.escape(meta)}</pre></details>'
        )
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
    verdict: Verdict | None = None,
) -> ReportFiles:
    """Publish `<out_dir>/<name>/` (`<name>.html` + `<name>_<table>.{csv,parquet}`) as one unit and link
    `<out_dir>/<name>.html` to its page (see the module docstring); returns the paths through the links."""
    out = Path(out_dir)
    page = render_html(title, sections, metadata, verdict)  # built in memory before anything is written
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
