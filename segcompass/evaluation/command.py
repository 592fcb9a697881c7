"""`segcompass evaluate`: options (the :class:`EvalConfig` fields plus the data set and predictor) and runner.

Imports only the config at module level, so `segcompass --help` stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Literal

from simple_parsing.helpers import field

from segcompass.evaluation.config import EvalConfig, EvalResult

logger = logging.getLogger(__name__)


@dataclass
class TargetOptions:
    """Which data set and which predictor `segcompass evaluate` scores (the flags listed first)."""

    data: str = "grefcoco"
    """Registered data set: grefcoco, refcoco, refcoco+, refcocog, reasonseg, hf_rows, or one registered
    with segcompass.data.register_dataset (built as factory(root=, split=))."""
    data_root: str = ""
    """Folder of the data set in its usual layout: grefcoco → grefs(unc).json + instances.json + images/;
    refcoco/refcoco+ → refs(unc).json, refcocog → refs(umd).json (+ instances.json + images/); reasonseg →
    <split>/ folders; hf_rows → *.parquet / *.jsonl row files."""
    split: str = "val"
    """Split to score (an unknown split is an error that lists the valid ones)."""
    images_dir: str = ""
    """Images folder (default: <data-root>/images; hf_rows: <data-root>)."""
    refs: str = ""
    """Refs file instead of the default name (a refer pickle is read only when named here); hf_rows: one row file."""
    instances: str = ""
    """COCO instances.json instead of <data-root>/instances.json."""
    skip_missing: bool = False
    """Count and skip samples whose image file is missing instead of stopping with an error."""
    predictor: Literal["checkpoint", "union", "empty", "oracle"] = "checkpoint"
    """What to evaluate: checkpoint (a trained model via segcompass.model.load_model, needs
    --checkpoint), union (one slot = all annotated objects of the image), empty (predicts nothing) or
    oracle (the ground truth; a sanity check)."""
    calibrate_split: str = ""
    """Choose the mask and confidence thresholds first, on this other split of the same data set
    (calibrate_thresholds: best gIoU under the rela convention over a grid), instead of taking
    --mask-threshold / --confidence-threshold as given; the choice is printed and written into the protocol."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""


@dataclass
class EvaluateCommandConfig(EvalConfig, TargetOptions):
    """Evaluate a predictor (a trained checkpoint, a trivial baseline or the oracle) on a data set, one
    sample per sentence, under the LISA and/or gRefCOCO (ReLA) conventions; print the summary and, with
    --out, write per-sample Parquet + CSV tables and the summary JSON + CSV with the protocol (convention,
    unit, data set, split, sample count, decoding, predictor, checkpoint) beside every number."""

    checkpoint: str = ""
    """Checkpoint to load with --predictor checkpoint; also the identifier written into the protocol."""
    out_dir: str | None = field(default=None, alias=["--out"])
    """Folder for <name>.<convention>.parquet/.csv (per sample), <name>.<convention>.summary.json and
    <name>.summary.csv (default: print the summary only)."""

    def eval_config(self) -> EvalConfig:
        """The :class:`EvalConfig` part of these options."""
        return EvalConfig(**{f.name: getattr(self, f.name) for f in fields(EvalConfig)})


def run_evaluate_command(cfg: EvaluateCommandConfig) -> EvalResult:
    """Open the data set, build the predictor, evaluate, print the summary table."""
    from segcompass.evaluation.datasets import open_dataset
    from segcompass.evaluation.factory import build_predictor
    from segcompass.evaluation.run import evaluate

    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    if cfg.predictor == "checkpoint" and not cfg.checkpoint:
        raise ValueError("--predictor checkpoint needs --checkpoint PATH (or pick union, empty or oracle)")
    if cfg.calibrate_split and cfg.calibrate_split == cfg.split:
        raise ValueError(
            f"--calibrate-split {cfg.calibrate_split!r} is the split being scored: choose thresholds on another one"
        )

    def _open(split: str):
        return open_dataset(
            cfg.data, cfg.data_root, split, images_dir=cfg.images_dir or None, refs=cfg.refs or None,
            instances=cfg.instances or None, skip_missing=cfg.skip_missing,
        )  # fmt: skip

    dataset = _open(cfg.split)
    predictor = build_predictor(cfg.predictor, dataset, cfg.checkpoint)
    eval_cfg, extra = cfg.eval_config(), {}
    if cfg.calibrate_split:
        from segcompass.evaluation.calibrate import calibrate_thresholds

        cal = calibrate_thresholds(predictor, _open(cfg.calibrate_split), eval_cfg)
        eval_cfg = cal.apply(eval_cfg)
        extra = {"calibrated_on": cfg.calibrate_split, "calibration_samples": cal.num_samples,
                 "calibration_giou": cal.value, "calibration_giou_at_given": cal.default_value}  # fmt: skip
        print(f"calibrated on {cfg.calibrate_split} ({cal.num_samples} samples): mask threshold "
              f"{cal.mask_threshold}, confidence threshold {cal.confidence_threshold} (gIoU {cal.value:.4f} vs "
              f"{cal.default_value:.4f} at the given thresholds)")  # fmt: skip
    result = evaluate(predictor, dataset, eval_cfg, extra)
    table = result.summary_table()
    print(table.to_string(index=False))  # the command's product, on stdout
    if result.paths:
        print(f"wrote {', '.join(str(p) for p in result.paths)}")
    return result
