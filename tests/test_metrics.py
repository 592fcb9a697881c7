"""Metrics: every convention branch on tiny hand-built masks, each value computed by hand (docs/design.md §5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from segcompass.metrics import (
    MetricAccumulator,
    MetricsConfig,
    prediction_mask,
    score_sample,
    split_label_map,
    write_results,
)

H, W = 2, 3


def m(*pixels: tuple[int, int]) -> np.ndarray:
    out = np.zeros((H, W), dtype=bool)
    for r, c in pixels:
        out[r, c] = True
    return out


EMPTY = m()


@pytest.mark.parametrize("convention", ["lisa", "rela"])
def test_branches_shared_by_both_conventions(convention: str) -> None:
    # empty prediction, empty GT: IoU 1, nothing added to I or U, TP
    a = score_sample("a", EMPTY, EMPTY, convention=convention)
    assert (a.intersection, a.union, a.iou, a.outcome, a.no_target) == (0, 0, 1.0, "TP", True)
    # no target, 2 predicted pixels: IoU 0, U += 2 (the predicted area), FN
    b = score_sample("b", m((0, 0), (1, 1)), EMPTY, no_target=True, convention=convention)
    assert (b.intersection, b.union, b.iou, b.outcome) == (0, 2, 0.0, "FN")
    # target of 3 pixels, empty prediction: I = 0, U = 3, IoU 0, FP
    c = score_sample("c", EMPTY, m((0, 0), (0, 1), (0, 2)), convention=convention)
    assert (c.intersection, c.union, c.iou, c.outcome) == (0, 3, 0.0, "FP")
    # ignore pixel (0, 2) is in both GT and prediction: without it GT {00, 01}, pred {01, 12} -> I 1, U 3
    d = score_sample(
        "d", m((0, 1), (0, 2), (1, 2)), m((0, 0), (0, 1), (0, 2)), ignore=m((0, 2)), convention=convention
    )
    assert (d.intersection, d.union, d.iou, d.ignored, d.gt_area, d.pred_area) == (1, 3, 1 / 3, 1, 2, 2)
    assert d.outcome == "TN"


def test_conventions_differ_on_empty_cases_decided_by_ignore_or_flag() -> None:
    # the only GT pixel is ignored and nothing is predicted: LISA sees U = 0 -> 1; ReLA: a target, empty -> FP 0
    lisa = score_sample("g", EMPTY, m((0, 2)), ignore=m((0, 2)), convention="lisa")
    rela = score_sample("g", EMPTY, m((0, 2)), ignore=m((0, 2)), convention="rela")
    assert (lisa.iou, lisa.union, lisa.outcome) == (1.0, 0, "FP")
    assert (rela.iou, rela.union, rela.outcome) == (0.0, 0, "FP")
    # no-target, prediction only inside the ignore region: LISA U = 0 -> 1; ReLA: FN, IoU 0
    lisa = score_sample("h", m((1, 1)), EMPTY, ignore=m((1, 1)), no_target=True, convention="lisa")
    rela = score_sample("h", m((1, 1)), EMPTY, ignore=m((1, 1)), no_target=True, convention="rela")
    assert (lisa.iou, rela.iou, rela.union, rela.outcome) == (1.0, 0.0, 0, "FN")


def test_prediction_mask_is_union_of_confident_slots() -> None:
    slots = np.stack([m((0, 0)), m((1, 1)), m((1, 2))])
    pred = prediction_mask(slots, np.array([0.9, 0.5, 0.4]))
    assert (pred == m((0, 0), (1, 1))).all()
    probs = torch.tensor(np.stack([m((0, 0)) * 0.7, m((1, 1)) * 0.3]), dtype=torch.float32)
    assert (prediction_mask(probs, torch.tensor([0.6, 0.6])) == m((0, 0))).all()  # mask prob .3 < .5
    assert not prediction_mask(np.zeros((0, H, W), bool), np.zeros(0)).any()
    with pytest.raises(ValueError, match="disagree"):
        prediction_mask(slots, np.array([0.9]))


def _run(convention: str) -> MetricAccumulator:
    acc = MetricAccumulator(MetricsConfig(convention=convention))  # type: ignore[arg-type]
    acc.add("A", EMPTY, EMPTY, text="nothing")  # TP, IoU 1
    acc.add("B", m((0, 0), (1, 1)), EMPTY, no_target=True)  # FN, IoU 0, U 2
    acc.add("C", EMPTY, [m((0, 0), (0, 1)), m((0, 2))])  # FP, IoU 0, U 3
    acc.add("D", m((0, 1), (0, 2), (1, 2)), m((0, 0), (0, 1), (0, 2)), ignore=m((0, 2)))  # TN, 1/3, I1 U3
    slots = np.stack([m((0, 0)), m((1, 1)), m((1, 2))])
    acc.add_slots("E", slots, np.array([0.9, 0.5, 0.4]), np.stack([m((0, 0)), m((1, 1))]))  # TN, 1, I2 U2
    acc.add("F", m((0, 0), (0, 1), (0, 2)), m((0, 0), (0, 1), (0, 2), (1, 0)))  # TN, .75, I3 U4
    return acc


@pytest.mark.parametrize("convention", ["lisa", "rela"])
def test_summary_by_hand(convention: str) -> None:
    acc = _run(convention)
    df = acc.per_sample()
    assert list(df["iou"]) == pytest.approx([1, 0, 0, 1 / 3, 1, 0.75])
    assert df.loc[4, "confident_slots"] == 2 and df.loc[0, "text"] == "nothing"
    assert (df["convention"] == convention).all()
    s = acc.summary(dataset="toy", split="val", checkpoint="step-10")
    assert s.giou == pytest.approx((1 + 1 / 3 + 1 + 0.75) / 6)
    assert s.ciou == pytest.approx((0 + 0 + 0 + 1 + 2 + 3) / (0 + 2 + 3 + 3 + 2 + 4))
    assert s.n_acc == pytest.approx(1 / 2) and s.t_acc == pytest.approx(3 / 4)
    # targets C, D, E, F have IoU 0, 1/3, 1, .75
    assert s.pr == pytest.approx({"Pr@0.7": 2 / 4, "Pr@0.8": 1 / 4, "Pr@0.9": 1 / 4})
    assert s.counts == {"samples": 6, "no_target": 2, "TP": 1, "FN": 1, "TN": 3, "FP": 1}
    p = s.protocol
    assert (p.convention, p.unit, p.split, p.num_samples, p.decoding) == (
        convention,
        "sentence",
        "val",
        6,
        "greedy",
    )
    assert p.extra == {"checkpoint": "step-10"}
    assert s.row()["gIoU"] == s.giou and s.row()["convention"] == convention


def test_undefined_numbers_are_none_and_bad_input_raises() -> None:
    acc = MetricAccumulator(MetricsConfig(convention="rela"))
    acc.add("only", EMPTY, EMPTY)
    s = acc.summary()
    assert (s.giou, s.ciou, s.t_acc, s.n_acc) == (1.0, None, None, 1.0)
    assert s.pr["Pr@0.7"] is None
    empty = MetricAccumulator().summary()
    assert empty.giou is None and empty.counts["samples"] == 0
    with pytest.raises(ValueError, match="unknown convention"):
        MetricAccumulator(MetricsConfig(convention="seg-zero"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ in size"):
        score_sample("x", np.zeros((2, 2), bool), EMPTY)
    target, ignore = split_label_map(np.array([[0, 1, 255]], dtype=np.uint8))
    assert target.tolist() == [[False, True, False]] and ignore.tolist() == [[False, False, True]]


def test_writer_round_trip_and_atomicity(tmp_path: Path) -> None:
    acc = _run("rela")
    df, s = acc.per_sample(), acc.summary(dataset="toy", split="val")
    paths = write_results(tmp_path / "eval", df, s, name="toy_val", formats=("parquet", "csv"))
    back = pd.read_parquet(paths.per_sample[0])
    assert list(back["sample_id"]) == list("ABCDEF") and back["iou"].tolist() == pytest.approx(
        df["iou"].tolist()
    )
    assert pd.read_csv(paths.per_sample[1])["outcome"].tolist() == ["TP", "FN", "FP", "TN", "TN", "TN"]
    summary = json.loads(paths.summary.read_text())
    assert summary["protocol"]["convention"] == "rela" and summary["protocol"]["unit"] == "sentence"
    assert summary["protocol"]["num_samples"] == 6 and summary["ciou"] == pytest.approx(6 / 14)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "toy_val.csv",
        "toy_val.parquet",
        "toy_val.summary.json",
    ]
    with pytest.raises(ValueError, match="table format"):
        write_results(tmp_path / "eval", df, s, formats=("xlsx",))
