"""Packaging and command lines: imports, console scripts, the default pipeline."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli import main as analyze_main
from analysis.pipeline import PipelineConfig, run_pipeline
from analysis.pipeline import main as pipeline_main


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
        "segcompass-sae": ["capture", "train", "evaluate"],
        "segcompass-analyze": ["pipeline", "coverage", "sparsity", "atoms", "provenance"],
    }[script]:
        assert sub in out
        sub_help = subprocess.run(
            [str(exe), sub, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "(default:" in sub_help  # every flag documented with its default


def test_cli_errors_are_one_line_messages(capsys):
    from segcompass.cli import main as model_main

    assert model_main(["contrast-baseline", "--worlds", "mars"]) == 2
    assert "error: worlds must be a subset of default,plain" in capsys.readouterr().err
    assert analyze_main(["contrast-baseline", "--worlds", "mars"]) == 2  # the old name still works
    err = capsys.readouterr().err
    assert "segcompass-analyze contrast-baseline is deprecated; use `segcompass contrast-baseline`" in err


def test_one_verb_per_action_across_the_three_clis():
    from analysis.cli import COMMANDS as ANALYZE
    from sae.cli import COMMANDS as SAE
    from segcompass.cli import COMMANDS as MODEL

    live = {c.name for commands in (ANALYZE, SAE, MODEL) for c in commands if not c.deprecated}
    assert "eval" not in live and {"evaluate", "warmup", "contrast-baseline"} <= live
    # model-side commands sit in `segcompass`; `segcompass-analyze` keeps only deprecated aliases of them
    assert {c.name for c in ANALYZE if c.deprecated} == {"warmup", "contrast-baseline"}
    assert all(c.deprecated.split()[0] == "segcompass" for c in ANALYZE if c.deprecated)


@pytest.mark.slow
def test_default_pipeline_runs_every_stage_and_reuses_its_outputs(tmp_path, capsys):
    cfg = PipelineConfig(
        out=str(tmp_path),
        backbone="tiny:llava",
        control_backbone="",
        sae_documents=12,
        analysis_documents=6,
        sae_epochs=1,
        batch_size=6,
    )
    first = pipeline_main(cfg)  # what `./dev.sh run` prints
    printed = capsys.readouterr().out
    contrast = first.coverage_contrasts.set_index(["model", "ranking"]).loc[("trained", "l0")]
    for text in (
        "Coverage verdict: coverage AUC of referred instances (trained backbone, tokens ranked by l0)",
        "random tokens (same budget)",
        "control not run",  # this run has none; the default's control is printed beside the same way
        "referred instances are covered",  # … than distractors: referred − distractor with its CI
        f"AUC difference {contrast['difference']:+.3f} [{contrast['ci_low']:+.3f}, {contrast['ci_high']:+.3f}]",
        "Sparsity verdict: mean L0 of instance image tokens",
        "coverage report: ",
    ):
        assert text in printed, (text, printed)
    referred = first.coverage_auc.set_index(["model", "ranking", "group"]).loc[("trained", "l0", "referred")]
    assert f"{referred['auc']:.3f} [{referred['auc_ci_low']:.3f}, {referred['auc_ci_high']:.3f}]" in printed
    for name in ("coverage", "sparsity"):
        html = first.reports[name].read_text()
        assert html.count("Plotly.newPlot") >= 1 and html.rstrip().endswith("</html>")
    auc = first.coverage_auc.set_index(["model", "ranking", "group"])["auc"]
    assert {"l0", "mass", "random"} <= set(first.coverage_auc["ranking"])
    assert 0.3 < auc[("trained", "random", "instances")] < 0.7  # the random baseline sits near 0.5
    groups = set(first.sparsity["group"])
    assert {"special", "instruction"} <= groups and groups & {
        "image_instance",
        "image_background",
        "image_mixed",
    }
    stores = sorted((tmp_path / "activations").iterdir())
    assert len(stores) == 2  # SAE-training store and analysis store of the one backbone
    stamps = [(s / "manifest.json").stat().st_mtime_ns for s in stores]
    sae_stamp = next((tmp_path / "sae").iterdir()).joinpath("cfg.json").stat().st_mtime_ns
    run_pipeline(cfg)  # everything cached: nothing captured or trained again
    assert [(s / "manifest.json").stat().st_mtime_ns for s in stores] == stamps
    assert next((tmp_path / "sae").iterdir()).joinpath("cfg.json").stat().st_mtime_ns == sae_stamp


def test_stage_keys_follow_what_a_backbone_spec_resolves_to():
    from types import SimpleNamespace

    from segcompass.artifacts import backbone_key, stage_key

    # `warm:qwen2_5_vl` resolves to a cache folder named by the warm-up config: a new warm-up default must
    # get new activation stores and SAEs, not the old backbone's.
    old = SimpleNamespace(name_or_path="/cache/backbones/qwen2_5_vl-894007fa96c2562a")
    new = SimpleNamespace(name_or_path="/cache/backbones/qwen2_5_vl-0123456789abcdef")
    keys = {stage_key(backbone_key("warm:qwen2_5_vl", b), 0, "corpus") for b in (old, new, old)}
    assert len(keys) == 2


def test_every_subcommand_of_the_three_clis_renders_its_help(capsys):
    from analysis.cli import COMMANDS as ANALYZE
    from sae.cli import COMMANDS as SAE
    from sae.cli import main as sae_main
    from segcompass.cli import COMMANDS as MODEL
    from segcompass.cli import main as model_main

    for main, commands in ((model_main, MODEL), (analyze_main, ANALYZE), (sae_main, SAE)):
        for cmd in commands:
            with pytest.raises(SystemExit) as exit_info:
                main([cmd.name, "--help"])  # a stray "%" in a field docstring used to crash this
            assert exit_info.value.code == 0
            text = capsys.readouterr().out
            if dataclasses.fields(cmd.config):
                assert "(default:" in text, cmd.name
            if cmd.name == "train" and main is model_main:
                flat = " ".join(text.split())
                assert "30 % more compute" in flat and "--lora-rank" in flat and "--sam" in flat
