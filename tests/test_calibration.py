"""Thresholds chosen on calibration data (`segcompass.evaluation.calibrate_thresholds`), by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluation import _world_ds, two_objects  # noqa: F401  (fixture)

from segcompass.data import RefSample
from segcompass.evaluation import EvalConfig, Prediction, calibrate_thresholds, evaluate

torch.set_num_threads(1)


class _Hedger:
    """Probability masks in a 12² head frame (= the 10 × 12 image, padded at the bottom):

    "a" (target A): one slot hedging over A and B at 0.3, confidence 0.45;
    "both" (A and B): A ∪ B at 0.9, confidence 0.9;
    "none" (no target): B at 0.45, confidence 0.15.
    """

    name = "hedger"

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = torch.from_numpy(a), torch.from_numpy(b)

    def predict(self, samples: list[RefSample]) -> list[Prediction]:
        out = []
        for s in samples:
            m = torch.zeros(1, 12, 12)
            if s.text == "a":
                m[0, :10][self.a | self.b], conf = 0.3, 0.45
            elif s.text == "both":
                m[0, :10][self.a | self.b], conf = 0.9, 0.9
            else:
                m[0, :10][self.b], conf = 0.45, 0.15
            out.append(Prediction(s.sample_id, m, torch.tensor([conf])))
        return out


def test_calibration_picks_the_hand_computed_best_pair(
    two_objects: tuple[Path, np.ndarray, np.ndarray],  # noqa: F811  (the imported fixture)
) -> None:
    root, a, b = two_objects
    ds, pred = _world_ds(root), _Hedger(a, b)
    ev = EvalConfig(img_size=12, progress=False, convention="rela")
    cal = calibrate_thresholds(pred, ds, ev)
    # 0.5 / 0.5: "a" predicts nothing (IoU 0), "both" 1, "none" correctly empty (1) → 2/3
    assert cal.default_value == pytest.approx(2 / 3)
    # mask ≤ 0.3 and confidence in (0.15, 0.45]: "a" → A ∪ B vs A = 20 / 36, the rest stay right; the first
    # such pair in grid order is (0.3, 0.4). Confidence ≤ 0.15 would predict B on "none" (IoU 0).
    assert (cal.mask_threshold, cal.confidence_threshold) == (0.3, 0.4)
    assert cal.value == pytest.approx((20 / 36 + 2) / 3)
    row = cal.table.set_index(["mask_threshold", "confidence_threshold"]).loc[(0.2, 0.1)]
    assert row["gIoU"] == pytest.approx((20 / 36 + 1 + 0) / 3) and row["N-acc"] == 0.0
    assert len(cal.table) == 4 * 6
    # applied: evaluate scores exactly the calibrated value on the same data
    res = evaluate(pred, ds, cal.apply(ev))
    assert res.summaries["rela"].giou == pytest.approx(cal.value)
    assert res.summaries["rela"].protocol.confidence_threshold == 0.4


def test_calibration_bad_input(
    two_objects: tuple[Path, np.ndarray, np.ndarray],  # noqa: F811  (the imported fixture)
) -> None:
    root, a, b = two_objects
    ds, pred = _world_ds(root), _Hedger(a, b)
    ev = EvalConfig(img_size=12, progress=False)
    with pytest.raises(ValueError, match="metric must be"):
        calibrate_thresholds(pred, ds, ev, metric="dice")
    with pytest.raises(ValueError, match=r"thresholds must be .* in \(0, 1\]"):
        calibrate_thresholds(pred, ds, ev, mask_thresholds=(0.0,))
    with pytest.raises(ValueError, match="convention"):
        calibrate_thresholds(pred, ds, ev, convention="both")
    with pytest.raises(ValueError, match="at least one sample"):
        calibrate_thresholds(pred, ds, EvalConfig(img_size=12, progress=False, limit=0))


def test_evaluate_cli_calibrates_on_another_split(tmp_path: Path, capsys) -> None:
    from segcompass.cli import main
    from segcompass.world import WorldConfig
    from segcompass.world.write_refcoco import write_refcoco_style

    cfg = WorldConfig(min_side=64, max_side=96, image_format="PNG", kind_weights={"plain": 1, "no_target": 1})
    write_refcoco_style(tmp_path / "w", cfg, {"val": 4, "test": 4})
    base = ["evaluate", "--data", "grefcoco", "--data-root", str(tmp_path / "w"), "--split", "val",
            "--progress", "false", "--predictor", "union"]  # fmt: skip
    assert main([*base, "--calibrate-split", "val"]) == 2
    assert "is the split being scored" in capsys.readouterr().err
    assert main([*base, "--calibrate-split", "test", "--out", str(tmp_path / "eval")]) == 0
    # the union baseline's masks are binary at confidence 1: every pair ties, the first (0.5, 0.5) is kept
    assert (
        "calibrated on test (4 samples): mask threshold 0.5, confidence threshold 0.5"
        in capsys.readouterr().out
    )
    import json

    p = json.loads((tmp_path / "eval" / "union_baseline.rela.summary.json").read_text())["protocol"]
    assert (
        p["split"] == "val"
        and p["extra"]["calibrated_on"] == "test"
        and p["extra"]["calibration_samples"] == 4
    )
