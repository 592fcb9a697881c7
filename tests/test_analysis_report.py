"""HTML reports: self-contained, published as one unit, and rendered by a real headless browser
(analysis/report/html.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from _browser_check import assert_renders, find_chromium, render_report

import analysis.report.html as report_mod
from analysis.report.html import Section, render_html, write_report

PLOTLY_BUNDLE_MARK = "plotly.js v"  # the banner at the top of the inlined plotly.min.js


def _sections() -> list[Section]:
    a = go.Figure(go.Scatter(x=[5, 50, 100], y=[0.2, 0.7, 1.0], name="l0"))
    b = go.Figure(go.Bar(x=["small", "large"], y=[0.6, 0.8]))
    table = pd.DataFrame({"group": ["instances", "background"], "auc": [0.81, 0.32]})
    return [Section("Coverage", "curves <b>escaped</b>", a, table), Section("Sizes", figure=b)]


def test_report_is_self_contained_with_tables(tmp_path: Path) -> None:
    tables = {"auc": pd.DataFrame({"k": [5.0, 10.0], "coverage": [0.1, 0.2]})}
    files = write_report(
        tmp_path / "out", "coverage", "Title & co", _sections(), tables, metadata={"seed": 0}
    )
    page = files.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count(PLOTLY_BUNDLE_MARK) == 1  # plotly.js inlined once, for the first figure
    assert not re.findall(r"<script[^>]*\bsrc=", page)  # no external script: nothing fetched from the network
    assert page.count('id="figure-') == 2 and "&lt;b&gt;escaped&lt;/b&gt;" in page
    assert "Title &amp; co" in page and "0.81" in page and "&quot;seed&quot;: 0" in page
    assert pd.read_csv(files.tables["auc"][0]).equals(tables["auc"])
    assert pd.read_parquet(files.tables["auc"][1]).equals(tables["auc"])
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "coverage",
        "coverage.html",
    ]
    assert sorted(p.name for p in (out / "coverage").iterdir()) == [
        "coverage.html",
        "coverage_auc.csv",
        "coverage_auc.parquet",
    ]
    assert (
        files.html == out / "coverage.html"
        and files.tables["auc"][0] == out / "coverage" / "coverage_auc.csv"
    )
    assert len([p for p in out.iterdir() if p.name.startswith(".")]) == 1  # one version, no lock left


def test_interrupted_report_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    sections = _sections()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    # interrupted while the page is being built: nothing is written at all
    monkeypatch.setattr(sections[1].figure, "to_html", boom)
    with pytest.raises(KeyboardInterrupt):
        write_report(out, "r", "t", sections, {"x": pd.DataFrame({"a": [1]})})
    assert not out.exists() or list(out.iterdir()) == []
    monkeypatch.undo()
    # a finished report, then a second run interrupted at the final rename: the old report survives intact
    first = write_report(out, "r", "t", _sections()).html.read_bytes()
    monkeypatch.setattr(report_mod.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_report(out, "r", "changed title", _sections())
    monkeypatch.undo()
    assert (out / "r.html").read_bytes() == first
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["r", "r.html"]
    assert len([p for p in out.iterdir() if p.name.startswith(".")]) == 1  # no temporary left behind


def _visible(files) -> dict[str, bytes]:
    """What a reader finds at a report's published paths (the page and every table file)."""
    paths = [files.html, *(p for ps in files.tables.values() for p in ps)]
    return {str(p): p.read_bytes() for p in paths}


@pytest.mark.parametrize("interrupt_at", ["second table", "page"])
def test_ctrl_c_while_a_report_replaces_another_leaves_the_old_set(
    tmp_path, monkeypatch, interrupt_at
) -> None:
    """#23.3: a report written over an earlier one is swapped in as one unit; Ctrl-C part-way leaves the
    earlier page and tables, never new tables beside the old page."""
    out = tmp_path / "out"
    old = {"a": pd.DataFrame({"n": [1, 2]}), "b": pd.DataFrame({"n": [3]})}
    files = write_report(out, "r", "old", _sections(), old)
    before = _visible(files)
    new = {"a": pd.DataFrame({"n": [10, 20, 30]}), "b": pd.DataFrame({"n": [40]})}
    calls = []
    original = pd.DataFrame.to_csv

    def to_csv(df, *args, **kwargs):
        calls.append(1)
        if interrupt_at == "second table" and len(calls) == 2:
            raise KeyboardInterrupt
        return original(df, *args, **kwargs)

    def write_text(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    if interrupt_at == "page":
        monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(KeyboardInterrupt):
        write_report(out, "r", "new", _sections(), new)
    monkeypatch.undo()
    assert _visible(files) == before
    again = write_report(out, "r", "new", _sections(), new)  # and an uninterrupted run replaces the set
    assert (
        pd.read_csv(again.tables["a"][0])["n"].tolist() == [10, 20, 30]
        and "<title>new</title>" in again.html.read_text()
    )


needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium installed (apt-get install chromium) — browser check skipped"
)


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    files = write_report(tmp_path, "coverage", "Coverage", _sections())
    check = render_report(files.html, screenshot=tmp_path / "shot.png")
    assert 'class="main-svg"' in check.dom, check.console[-5:]
    assert check.figures == 2
    assert check.page_errors == "" and check.console_errors == []
    assert check.ok
    from PIL import Image

    assert check.screenshot is not None
    img = Image.open(check.screenshot).convert("L")
    assert len(set(img.getdata())) > 20  # something was drawn, not a blank page


@needs_chromium
def test_browser_check_sees_script_errors(tmp_path: Path) -> None:
    page = render_html("broken", _sections()[:1]).replace(
        "</body>", "<script>noSuchFunction();</script></body>"
    )
    path = tmp_path / "broken.html"
    path.write_text(page)
    check = render_report(path)
    assert "noSuchFunction" in check.page_errors and not check.ok
    with pytest.raises(AssertionError, match="noSuchFunction"):  # what the report tests call: it fails
        assert_renders(path)


@needs_chromium
def test_browser_check_fails_a_page_that_draws_no_figure(tmp_path: Path) -> None:
    """A figure whose data plotly cannot draw (here: its script never runs) is a render failure."""
    page = render_html("empty", _sections()[:1]).replace("Plotly.newPlot(", "void(")
    path = tmp_path / "undrawn.html"
    path.write_text(page)
    with pytest.raises(AssertionError, match="no figure drawn"):
        assert_renders(path)
