""".ci/run installs Chromium when it is missing, so the report browser checks run in CI: tested with stand-in
`apt-get`, `id` and `sudo` on PATH (nothing is installed, nothing downloaded)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CI_RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def _ensure_chromium(tmp_path: Path, *, uid: int, chromium: bool, apt: str, sudo: bool | None = None):
    """Run .ci/run's `ensure_chromium` with stand-ins; returns (exit code, calls logged, stderr).

    apt: "ok" (install works), "needs-update" (install works after apt-get update), "broken" (never works).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls"
    _stub(bin_dir, "id", f'[ "$1" = -u ] && echo {uid}')
    state = tmp_path / "updated"
    apt_body = {
        "ok": f'echo "apt-get $*" >> {log}',
        "needs-update": (
            f'echo "apt-get $*" >> {log}; [ "$1" = update ] && : > {state} && exit 0; [ -e {state} ] || exit 100'
        ),
        "broken": f'echo "apt-get $*" >> {log}; exit 100',
    }[apt]
    _stub(bin_dir, "apt-get", apt_body)
    if chromium:
        _stub(bin_dir, "chromium", "exit 0")
    if sudo is not None:
        then = 'exec "$@"' if sudo else "exit 1"
        _stub(bin_dir, "sudo", f'echo "sudo $*" >> {log}; [ "$1" = -n ] && shift; {then}')
    for tool in ("bash", "env", "sed", "true"):
        os.symlink(
            subprocess.check_output(["bash", "-c", f"type -P {tool}"], text=True).strip(), bin_dir / tool
        )
    script = f'source <(sed -n "/^ensure_chromium()/,/^}}/p" {CI_RUN}); ensure_chromium'
    proc = subprocess.run(
        [str(bin_dir / "bash"), "-c", script],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls, proc.stderr


def test_ci_run_installs_chromium_then_runs_the_readme_test_command_only() -> None:
    top = [line for line in CI_RUN.read_text().splitlines() if line and not line.startswith(("#", " ", "}"))]
    after = top[top.index("ensure_chromium() {") + 1 :]
    assert after[0] == "ensure_chromium" and after[-1] == "exec ./dev.sh test"
    assert [a.split("=")[0] for a in after[1:-1]] == [
        "key",
        "export SEGCOMPASS_VENV",
    ]  # as before: the venv cache


def test_present_chromium_is_left_alone(tmp_path: Path) -> None:
    assert _ensure_chromium(tmp_path, uid=0, chromium=True, apt="ok")[:2] == (0, [])


@pytest.mark.parametrize(
    ("apt", "expected"),
    [
        ("ok", ["apt-get install -y -q chromium"]),
        (
            "needs-update",
            ["apt-get install -y -q chromium", "apt-get update -q", "apt-get install -y -q chromium"],
        ),
    ],
)
def test_root_installs_the_debian_package(tmp_path: Path, apt: str, expected: list[str]) -> None:
    code, calls, err = _ensure_chromium(tmp_path, uid=0, chromium=False, apt=apt)
    assert (code, calls) == (0, expected) and "installing Chromium" in err


def test_a_failed_install_does_not_stop_the_tests(tmp_path: Path) -> None:
    code, calls, err = _ensure_chromium(tmp_path, uid=0, chromium=False, apt="broken")
    assert code == 0 and calls == ["apt-get install -y -q chromium", "apt-get update -q"]
    assert "could not install Chromium: the report browser checks will be skipped" in err


def test_not_root_uses_passwordless_sudo_or_skips(tmp_path: Path) -> None:
    code, calls, _ = _ensure_chromium(tmp_path / "a", uid=1000, chromium=False, apt="ok", sudo=True)
    assert code == 0 and calls[-2:] == [
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium",
        "apt-get install -y -q chromium",
    ]
    code, calls, err = _ensure_chromium(tmp_path / "b", uid=1000, chromium=False, apt="ok", sudo=False)
    assert code == 0 and not [c for c in calls if c.startswith("apt-get")] and "not root" in err
    code, calls, err = _ensure_chromium(tmp_path / "c", uid=1000, chromium=False, apt="ok")
    assert code == 0 and calls == [] and "not root" in err
