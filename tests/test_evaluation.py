"""The evaluation entry point (issue #7): frames, baselines, evaluate / evaluate_many, the `segcompass` CLI."""

from __future__ import annotations

import json
from dataclasses import fields
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _faults import interrupted_on_call
from PIL import Image
from pycocotools import mask as mask_utils

from segcompass.cli import main
from segcompass.data import GRefCocoDataset, ReasonSegDataset, RefSample
from segcompass.evaluation import (
    EmptyPredictor,
    EvalConfig,
    OraclePredictor,
    Prediction,
    UnionOfObjectsPredictor,
    UnsupportedDatasetError,
    evaluate,
    evaluate_many,
    head_to_image_frame,
    image_to_head_frame,
)
from segcompass.evaluation.command import EvaluateCommandConfig
from segcompass.head.preprocess import preprocess_masks
from segcompass.world import WorldConfig
from segcompass.world.write_reasonseg import write_reasonseg_style
from segcompass.world.write_refcoco import write_refcoco_style

torch.set_num_threads(1)

QUIET = {"progress": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic-world gRefCOCO-style data set (plain, multi-target and no-target sentences)."""
    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(
        min_side=64, max_side=120, image_format="PNG", kind_weights={"plain": 1, "multi": 1, "no_target": 1}
    )
    write_refcoco_style(root, cfg, {"val": 8})
    return root


def _world_ds(root: Path) -> GRefCocoDataset:
    return GRefCocoDataset(root / "grefs(unc).json", root / "instances.json", root / "images", "val")


def test_world_fixture_has_every_kind(world: Path) -> None:
    kinds = {s.meta["kind"] for s in _world_ds(world)}
    assert {"plain", "multi", "no_target"} <= kinds
    assert any(len(s.masks) > 1 for s in _world_ds(world))


# ----------------------------------------------------------------------------------------- frames


@pytest.mark.parametrize("hw", [(200, 300), (317, 160), (64, 64), (90, 250), (399, 399)])
def test_rectangle_round_trips_preprocess_masks_within_one_pixel(hw: tuple[int, int]) -> None:
    h, w = hw
    y0, y1, x0, x1 = h // 5, h // 5 + h // 2, w // 3, w // 3 + w // 4
    rect = np.zeros((1, h, w), dtype=bool)
    rect[0, y0:y1, x0:x1] = True
    back = head_to_image_frame(preprocess_masks(rect), (h, w))[0].numpy()  # 256² → (H, W)
    outer = np.zeros((h, w), dtype=bool)
    outer[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = True
    inner = np.zeros((h, w), dtype=bool)
    inner[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = True
    assert not (back & ~outer).any() and (back | ~inner).all()  # differs only in a 1-px band at the edge
    # a rectangle of the head's frame stays an exact rectangle in the image (nearest sampling)
    head = torch.zeros(1, 256, 256, dtype=torch.bool)
    head[0, 40:90, 30:70] = True
    img = head_to_image_frame(head, (h, w))[0].numpy()
    ys, xs = np.nonzero(img)
    assert img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    assert img.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)


@pytest.mark.parametrize("hw", [(7, 1024), (333, 129), (1024, 1000), (513, 77)])
def test_image_frame_round_trip_is_exact_at_full_resolution(hw: tuple[int, int]) -> None:
    masks = np.random.default_rng(sum(hw)).random((3, *hw)) < 0.4
    head = image_to_head_frame(masks)
    assert head.shape == (3, 1024, 1024) and head.dtype == torch.bool
    assert torch.equal(head_to_image_frame(head, hw), torch.from_numpy(masks))
    assert head_to_image_frame(torch.zeros(0, 256, 256), hw).shape == (0, *hw)
    with pytest.raises(ValueError, match=r"\[K, S, S\]"):
        head_to_image_frame(torch.zeros(2, 256, 128), hw)


# ----------------------------------------------------------------------------------------- baselines


def test_oracle_scores_one_under_both_conventions_and_is_side_by_side_with_baselines(world: Path) -> None:
    ds = _world_ds(world)
    res = evaluate(OraclePredictor(), ds, EvalConfig(convention="both", **QUIET))
    assert set(res.summaries) == {"lisa", "rela"} and len(res.per_sample) == 2 * len(ds)
    for s in res.summaries.values():
        assert s.giou == 1.0 and s.ciou == 1.0 and s.n_acc == 1.0 and s.t_acc == 1.0
    table = evaluate_many(
        [OraclePredictor(), EmptyPredictor(), UnionOfObjectsPredictor(ds)], ds, EvalConfig(**QUIET)
    )
    assert list(table["predictor"]) == ["oracle", "empty_baseline", "union_baseline"]
    assert {"gIoU (lisa)", "cIoU (rela)", "N-acc (rela)", "T-acc (lisa)", "Pr@0.9 (rela)"} <= set(
        table.columns
    )
    assert (table["unit"] == "sentence").all() and (table["num_samples"] == len(ds)).all()
    assert table.set_index("predictor").loc["oracle", "gIoU (rela)"] == 1.0


def test_empty_predictor_matches_hand_computed_values(world: Path) -> None:
    ds = _world_ds(world)
    samples = list(ds)
    n, n_nt = len(samples), sum(s.no_target for s in samples)
    assert 0 < n_nt < n
    sum_u = sum(int(s.union_mask().sum()) for s in samples)  # U of a target sample = its GT area
    res = evaluate(EmptyPredictor(), ds, EvalConfig(**QUIET))
    lisa, rela = res.summaries["lisa"], res.summaries["rela"]
    # LISA: empty/empty → IoU 1 (no-target samples), otherwise I = 0 → IoU 0
    assert lisa.giou == pytest.approx(n_nt / n) and lisa.ciou == 0.0 and sum_u > 0
    # ReLA: no-target + empty = TP (IoU 1); target + empty = FP (I = 0)
    assert rela.giou == pytest.approx(n_nt / n) and rela.ciou == 0.0
    assert rela.counts == {"samples": n, "no_target": n_nt, "TP": n_nt, "FN": 0, "TN": 0, "FP": n - n_nt}
    assert rela.n_acc == 1.0 and rela.t_acc == 0.0 and rela.pr["Pr@0.7"] == 0.0
    rows = res.per_sample[res.per_sample["convention"] == "lisa"]
    assert (rows["confident_slots"] == 0).all() and int(rows["union"].sum()) == sum_u


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def two_objects(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """One 10×12 image with two overlapping annotated objects A (20 px) and B (20 px), overlap 4 px."""
    h, w = 10, 12
    a, b = np.zeros((h, w), bool), np.zeros((h, w), bool)
    a[1:5, 1:6] = True  # 4 × 5
    b[3:7, 4:9] = True  # 4 × 5, overlaps A in rows 3-4 × cols 4-5
    (tmp_path / "images").mkdir()
    Image.new("RGB", (w, h), (10, 200, 10)).save(tmp_path / "images" / "one.png")
    instances = {
        "images": [{"id": 1, "file_name": "one.png", "height": h, "width": w}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": _rle(a), "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 2, "segmentation": _rle(b), "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    refs = [
        {"ref_id": 0, "image_id": 1, "ann_id": [11], "split": "val", "sentences": [{"sent": "a", "sent_id": 0}]},
        {"ref_id": 1, "image_id": 1, "ann_id": [11, 12], "split": "val", "sentences": [{"sent": "both", "sent_id": 1}]},
        {"ref_id": 2, "image_id": 1, "ann_id": [-1], "split": "val", "sentences": [{"sent": "none", "sent_id": 2}]},
    ]  # fmt: skip
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "grefs(unc).json").write_text(json.dumps(refs))
    return tmp_path, a, b


def test_union_baseline_on_two_objects_by_hand(two_objects: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, a, b = two_objects
    ds = _world_ds(root)
    assert np.array_equal(ds.image_instances(ds[0]), np.stack([a, b]))  # B is there though not referred
    assert (a | b).sum() == 36
    res = evaluate(UnionOfObjectsPredictor(ds), ds, EvalConfig(**QUIET))
    for conv in ("lisa", "rela"):
        rows = res.per_sample[res.per_sample["convention"] == conv].set_index("text")
        assert rows.loc["a", ["intersection", "union"]].tolist() == [20, 36]  # A vs A∪B
        assert rows.loc["both", ["intersection", "union"]].tolist() == [36, 36]
        assert rows.loc["none", ["intersection", "union", "iou"]].tolist() == [0, 36, 0.0]  # FN, area in ΣU
        s = res.summaries[conv]
        assert s.giou == pytest.approx((20 / 36 + 1 + 0) / 3)
        assert s.ciou == pytest.approx((20 + 36 + 0) / (36 * 3))
        assert s.n_acc == 0.0 and s.t_acc == 1.0
        assert s.pr == {"Pr@0.7": 0.5, "Pr@0.8": 0.5, "Pr@0.9": 0.5}


def test_union_baseline_refuses_reasonseg(tmp_path: Path) -> None:
    write_reasonseg_style(tmp_path, WorldConfig(min_side=64, max_side=64), {"val": 1})
    with pytest.raises(UnsupportedDatasetError, match="ReasonSeg annotates only the target"):
        UnionOfObjectsPredictor(ReasonSegDataset(tmp_path, "val"))


RESPONSE = "<think>look at it</think> <REF_POS>"


class _Talker:
    """Returns the oracle's masks with a response and extras; raises KeyboardInterrupt at a given call."""

    name = "talker"

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls, self.interrupt_at = 0, interrupt_at

    def predict(self, samples: list[RefSample]) -> list[Prediction]:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        preds = OraclePredictor().predict(samples)
        for p in preds:
            p.response, p.extras = RESPONSE, {"format_reward": 1.0, "iou": 9.0}
        return preds


def test_per_sample_columns_and_existing_results(world: Path, tmp_path: Path) -> None:
    ds = _world_ds(world)
    cfg = EvalConfig(
        convention="rela", limit=3, batch_size=2, out_dir=str(tmp_path), checkpoint="ck", step=5, **QUIET
    )
    res = evaluate(_Talker(), ds, cfg, extra={"seed": 3})
    df = res.per_sample
    assert len(df) == 3 and set(df["convention"]) == {"rela"}
    assert (df["response_chars"] == len(RESPONSE)).all() and (df["response_words"] == 4).all()
    assert (df["format_reward"] == 1.0).all() and (df["extra_iou"] == 9.0).all() and (df["iou"] == 1.0).all()
    e = res.summaries["rela"].protocol.extra
    assert (e["checkpoint"], e["step"], e["seed"], e["limit"], e["predictor"]) == ("ck", 5, 3, 3, "talker")
    with pytest.raises(FileExistsError, match="--overwrite"):
        evaluate(_Talker(), ds, cfg)
    evaluate(_Talker(), ds, EvalConfig(**{**cfg.__dict__, "overwrite": True}))


# ----------------------------------------------------------------------------------------- interrupts


def test_keyboard_interrupt_mid_run_or_mid_write_leaves_no_files(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _world_ds(world)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        evaluate(_Talker(interrupt_at=2), ds, EvalConfig(batch_size=2, out_dir=str(out), **QUIET))
    assert not out.exists() or not any(out.iterdir())

    import segcompass.evaluation.output as output

    # the second convention's files are interrupted while being written
    monkeypatch.setattr(output, "write_results", interrupted_on_call(output.write_results, 2))
    with pytest.raises(KeyboardInterrupt):
        evaluate(OraclePredictor(), ds, EvalConfig(out_dir=str(out), **QUIET))
    assert list(out.iterdir()) == []  # not even the staging folder


# ----------------------------------------------------------------------------------------- CLI


def _cli(world: Path, *args: str) -> int:
    return main(["evaluate", "--data", "grefcoco", "--data-root", str(world), "--split", "val",
                 "--progress", "false", *args])  # fmt: skip


def test_cli_writes_parquet_csv_and_summary_with_protocol(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert _cli(world, "--predictor", "union", "--out", str(out), "--step", "7") == 0
    assert "union_baseline" in capsys.readouterr().out
    n = len(_world_ds(world))
    for conv in ("lisa", "rela"):
        pq = pd.read_parquet(out / f"union_baseline.{conv}.parquet")
        csv = pd.read_csv(out / f"union_baseline.{conv}.csv")
        assert len(pq) == len(csv) == n and list(pq["sample_id"]) == list(csv["sample_id"])
        summary = json.loads((out / f"union_baseline.{conv}.summary.json").read_text())
        p = summary["protocol"]
        assert (p["convention"], p["unit"], p["dataset"], p["split"], p["num_samples"], p["decoding"]) == (
            conv, "sentence", "grefcoco", "val", n, "greedy",
        )  # fmt: skip
        assert p["extra"]["predictor"] == "union_baseline" and p["extra"]["step"] == 7
        assert "checkpoint" in p["extra"] and summary["giou"] is not None
    table = pd.read_csv(out / "union_baseline.summary.csv")
    assert list(table["convention"]) == ["lisa", "rela"] and {"gIoU", "cIoU", "N-acc", "T-acc"} <= set(table)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_cli_help_names_every_flag_and_the_console_script_exists(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flags = [f"--{f.name.replace('_', '-')}" for f in fields(EvaluateCommandConfig)]
    assert all(flag in text for flag in flags) and "--out" in text
    assert text.count("(default:") >= len(flags)
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("segcompass") == "segcompass.cli:main"


def test_cli_bad_input_is_a_clear_error(world: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    assert _cli(world, "--split", "nope", "--predictor", "empty") == 2
    assert "unknown split 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        _cli(world, "--predictor", "magic")
    assert exit_.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err
    assert _cli(world, "--predictor", "checkpoint", "--checkpoint", str(tmp_path / "missing.pt")) == 2
    assert "checkpoint" in (err := capsys.readouterr().err) and "does not exist" in err
    assert _cli(world, "--predictor", "checkpoint") == 2
    assert "needs --checkpoint PATH" in capsys.readouterr().err
    assert main(["evaluate", "--data", "nowhere", "--data-root", str(world), "--predictor", "empty"]) == 2
    assert "unknown data set 'nowhere'" in capsys.readouterr().err
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert _cli(world, "--predictor", "checkpoint", "--checkpoint", str(ckpt)) == 2  # a folder, but no model
    assert "holds no SegCompass model" in capsys.readouterr().err


def test_cli_checkpoint_goes_through_load_predictor_and_interrupt_writes_nothing(
    world: Path, tmp_path: Path, monkeypatch
) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    loaded: list[Path] = []
    import segcompass.evaluation.model_predictor as model_predictor

    def load_predictor(path: Path) -> _Talker:
        loaded.append(Path(path))
        return _Talker(interrupt_at=2) if len(loaded) == 1 else _Talker()

    monkeypatch.setattr(model_predictor, "load_predictor", load_predictor)
    out = tmp_path / "out"
    args = ("--predictor", "checkpoint", "--checkpoint", str(ckpt), "--out", str(out), "--batch-size", "2")
    assert _cli(world, *args) == 130 and loaded == [ckpt]
    assert not out.exists() or not any(out.iterdir())
    assert _cli(world, *args, "--convention", "lisa") == 0
    summary = json.loads((out / "talker.lisa.summary.json").read_text())
    assert summary["protocol"]["extra"]["checkpoint"] == str(ckpt) and summary["giou"] == 1.0
