"""Packaging and command lines: imports, console scripts, the default pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli import main as analyze_main
from analysis.pipeline import PipelineConfig, run_pipeline


def test_the_three_packages_import_and_only_point_one_way():
    code = (
        "import sys, sae, sae.capture, sae.store; assert 'segcompass' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    subprocess.run([sys.executable, "-c", "import segcompass, sae, analysis"], check=True)


@pytest.mark.parametrize("script", ["segcompass-sae", "segcompass-analyze"])
def test_console_scripts_print_help(script):
    exe = Path(sys.executable).with_name(script)
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"usage: {script}")
    for sub in {
        "segcompass-sae": ["capture", "train", "eval"],
        "segcompass-analyze": ["pipeline", "contrast-baseline"],
    }[script]:
        assert sub in out
        sub_help = subprocess.run(
            [str(exe), sub, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "(default:" in sub_help  # every flag documented with its default


def test_cli_errors_are_one_line_messages(capsys):
    assert analyze_main(["contrast-baseline", "--worlds", "mars"]) == 2
    assert "error: worlds must be a subset of default,plain" in capsys.readouterr().err


def test_default_pipeline_summarises_hook_states_and_reuses_its_data(tmp_path):
    cfg = PipelineConfig(out=str(tmp_path), num_samples=6, batch_size=3, backbone="tiny:llava")
    first = run_pipeline(cfg)
    assert (first.data_dir / "instances.json").exists() and (first.data_dir / "grefs(unc).json").exists()
    types = dict(zip(first.token_types["token type"], first.token_types["tokens"], strict=True))
    assert types["image"] == 6 * 64  # 8×8 LLaVA tiny grid per sample
    assert set(types) == {"special", "image", "instruction"}
    located = first.image_tokens.set_index("image token on")["tokens"]
    assert located.sum() == types["image"] and located["background"] > 0
    stamp = (first.data_dir / "instances.json").stat().st_mtime_ns
    second = run_pipeline(cfg)
    assert (second.data_dir / "instances.json").stat().st_mtime_ns == stamp  # cached, not rewritten
    assert (tmp_path / "reports" / "hook_states_by_token_type.csv").exists()
