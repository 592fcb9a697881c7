"""Open a report in a real headless Chromium and check that its plotly figures rendered without errors.

Used by the tests (skipped where no Chromium is installed) and by `bench/bench_analysis.py`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CONSOLE = re.compile(r"CONSOLE\(\d+\)\]|:CONSOLE:|Uncaught ")
_ERRORS_PRE = re.compile(r'<pre id="report-errors">(.*?)</pre>', re.S)


@dataclass
class RenderCheck:
    """What the browser showed."""

    figures: int
    """Plotly figures drawn (elements with class "main-svg" come in pairs per figure; this counts plots)."""
    page_errors: str
    """Script errors the page recorded in `#report-errors` (empty when none)."""
    console: list[str] = field(default_factory=list)
    """Console messages Chromium logged to stderr."""
    dom: str = ""
    """The rendered DOM."""
    screenshot: Path | None = None
    """The screenshot, when one was asked for."""

    @property
    def console_errors(self) -> list[str]:
        return [m for m in self.console if re.search(r"error|uncaught", m, re.I)]

    @property
    def ok(self) -> bool:
        return self.figures > 0 and not self.page_errors.strip() and not self.console_errors


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) binary, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(binary: str, args: list[str], profile: str, timeout: float) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def render_report(
    html_path: str | Path, *, screenshot: str | Path | None = None, timeout: float = 120
) -> RenderCheck:
    """Load `html_path` (file://) headless, dump the DOM (and optionally a screenshot); raise if no Chromium."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)})")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        proc = _run(binary, ["--dump-dom", url], profile, timeout)
        dom = proc.stdout
        console = [line for line in proc.stderr.splitlines() if _CONSOLE.search(line)]
        shot = None
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            _run(binary, [f"--screenshot={shot}", "--window-size=1400,1200", url], profile, timeout)
            if not shot.exists():
                shot = None
    errors = _ERRORS_PRE.search(dom)
    plots = len(re.findall(r'class="[^"]*\bplot-container\b', dom))
    return RenderCheck(plots, errors.group(1) if errors else "", console, dom, shot)


def assert_renders(html_path: str | Path, figures: int | None = None, **kwargs) -> RenderCheck:
    """Render `html_path` in headless Chromium and fail unless its figures were drawn (`figures` of them when
    given) with no script error in the page or the console."""
    check = render_report(html_path, **kwargs)
    assert 'class="main-svg"' in check.dom, f"no figure drawn; console: {check.console[-5:]}"
    assert check.page_errors == "", f"script errors in the page: {check.page_errors}"
    assert check.console_errors == [], f"console errors: {check.console_errors}"
    if figures is not None:
        assert check.figures == figures, f"{check.figures} figures drawn, expected {figures}"
    assert check.ok
    return check
