"""The evaluation entry point: any :class:`Predictor` on any :class:`RefDataset`, per sentence (docs/design.md §5).

::

    from segcompass.evaluation import EvalConfig, evaluate, evaluate_many, UnionOfObjectsPredictor
    res = evaluate(model, dataset, EvalConfig(out_dir="runs/eval", checkpoint="ckpt/step_500", step=500))
    res.summaries["rela"].giou, res.per_sample
    table = evaluate_many([model, EmptyPredictor(), UnionOfObjectsPredictor(dataset)], dataset)

Predictions come in the head's frame and are mapped back to each image's (H, W) with
:func:`~segcompass.evaluation.frames.head_to_image_frame` (nearest), then scored by
:class:`segcompass.metrics.MetricAccumulator` (the union of the slots with confidence ≥ the threshold).
Nothing is written until every sample is scored, so an interrupted run leaves no files behind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from segcompass.data.base import RefDataset
from segcompass.data.sample import RefSample
from segcompass.evaluation.config import EvalConfig, EvalResult
from segcompass.evaluation.frames import head_to_image_frame
from segcompass.evaluation.output import check_writable, write_evaluation
from segcompass.evaluation.predictor import Prediction, Predictor
from segcompass.metrics import MetricAccumulator, MetricsConfig, SampleScore, atomic_write

logger = logging.getLogger(__name__)

_RESERVED = {f.name for f in fields(SampleScore)} | {
    "convention", "confident_slots", "predictor", "text", "kind", "n_targets", "response",
    "response_chars", "response_words",
}  # fmt: skip


def _check_prediction(pred: Prediction, sample: RefSample) -> None:
    if pred.sample_id != sample.sample_id:
        raise ValueError(f"prediction for {pred.sample_id!r} came in the place of {sample.sample_id!r}")
    m, c = pred.slot_masks, pred.slot_confidence
    if m.ndim != 3 or m.shape[1] != m.shape[2] or c.reshape(-1).shape[0] != m.shape[0]:
        raise ValueError(
            f"{sample.sample_id}: expected slot masks [K, S, S] and confidences [K], "
            f"got {tuple(m.shape)} and {tuple(c.shape)}"
        )


def _columns(pred: Prediction, sample: RefSample, predictor: str) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "predictor": predictor,
        "text": sample.text,
        "kind": sample.meta.get("kind"),
        "n_targets": len(sample.masks),
        "response": pred.response,
        "response_chars": len(pred.response),
        "response_words": len(pred.response.split()),
    }
    for k, v in pred.extras.items():
        cols[f"extra_{k}" if k in _RESERVED else k] = v
    return cols


def _protocol_extra(
    predictor: Predictor, dataset: RefDataset, config: EvalConfig, n: int, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "predictor": predictor.name,
        "checkpoint": config.checkpoint or str(getattr(predictor, "checkpoint", "") or ""),
        "step": config.step if config.step is not None else getattr(predictor, "step", None),
        "dataset_size": len(dataset),
        "limit": config.limit,
        "scored": n,
        "mask_threshold": config.mask_threshold,
        "img_size": config.img_size,
        "frame_inverse": "nearest",
        "dataset_skipped": dict(getattr(dataset, "skipped", {}) or {}),
        "dataset_notes": dict(getattr(dataset, "notes", {}) or {}),
        **dict(extra or {}),
    }


def evaluate(
    predictor: Predictor,
    dataset: RefDataset,
    config: EvalConfig | None = None,
    extra: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Score ``predictor`` on ``dataset`` (one sample per sentence) and, with ``config.out_dir``, write
    ``<name>.<conv>.parquet|csv`` (per sample), ``<name>.<conv>.summary.json`` and ``<name>.summary.csv``.

    Args:
        predictor: anything with ``name`` and ``predict(samples) -> list[Prediction]``.
        dataset: a :class:`RefDataset` (``segcompass.data`` loaders or your own).
        config: settings (defaults: both conventions, batch 8, all samples, threshold 0.5, nothing written).
        extra: more protocol fields (seed, config or data hashes, checkpoint-selection rule, …).
    """
    config = config or EvalConfig()
    if not isinstance(predictor, Predictor):
        raise TypeError(f"{type(predictor).__name__} is not a Predictor (needs name and predict(samples))")
    stem = config.name or predictor.name
    if config.out_dir is not None:
        check_writable(config.out_dir, stem, config.conventions, config.overwrite)
    n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    accs = {
        c: MetricAccumulator(MetricsConfig(c, config.confidence_threshold, config.mask_threshold))  # type: ignore[arg-type]
        for c in config.conventions
    }
    source = dataset.source or type(dataset).__name__
    logger.info("evaluating %s on %s/%s: %d samples (%s)", predictor.name, source, dataset.split, n,
                ", ".join(config.conventions))  # fmt: skip
    bar = tqdm(total=n, desc=f"evaluate {predictor.name}", unit="sample", disable=not config.progress)
    try:
        for start in range(0, n, config.batch_size):
            samples = [dataset[i] for i in range(start, min(start + config.batch_size, n))]
            with torch.no_grad():
                preds = predictor.predict(samples)
            if len(preds) != len(samples):
                raise ValueError(
                    f"{predictor.name} returned {len(preds)} predictions for {len(samples)} samples"
                )
            for s, p in zip(samples, preds, strict=True):
                _score(accs, config, s, p, predictor.name)
            bar.update(len(samples))
    except KeyboardInterrupt:
        logger.warning("evaluation of %s interrupted; nothing was written", predictor.name)
        raise
    finally:
        bar.close()
    pextra = _protocol_extra(predictor, dataset, config, n, extra)
    summaries = {
        c: a.summary(dataset=source, split=dataset.split, decoding=config.decoding, **pextra)
        for c, a in accs.items()
    }
    tables = {c: a.per_sample() for c, a in accs.items()}
    result = EvalResult(predictor.name, pd.concat(tables.values(), ignore_index=True), summaries)
    if config.out_dir is not None:
        result.paths = write_evaluation(config.out_dir, stem, tables, summaries, _summary_rows(result))
    for c, s in summaries.items():
        logger.info("%s [%s]: gIoU %s, cIoU %s, N-acc %s, T-acc %s (%d samples)", predictor.name, c,
                    _fmt(s.giou), _fmt(s.ciou), _fmt(s.n_acc), _fmt(s.t_acc), s.protocol.num_samples)  # fmt: skip
    return result


def _score(
    accs: Mapping[str, MetricAccumulator], config: EvalConfig, s: RefSample, p: Prediction, name: str
) -> None:
    _check_prediction(p, s)
    conf = p.slot_confidence.detach().float().cpu().reshape(-1)
    keep = conf >= config.confidence_threshold
    masks = head_to_image_frame(p.slot_masks[keep.to(p.slot_masks.device)], s.image_size, config.img_size,
                                config.mask_threshold)  # fmt: skip
    gt, cols = s.stacked_masks(), _columns(p, s, name)
    for acc in accs.values():
        acc.add_slots(s.sample_id, masks, conf[keep], gt, ignore=s.ignore, no_target=s.no_target, **cols)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _summary_rows(result: EvalResult) -> pd.DataFrame:
    rows = []
    for s in result.summaries.values():
        e = s.protocol.extra
        rows.append({"predictor": result.predictor, **s.row(), "checkpoint": e.get("checkpoint"),
                     "step": e.get("step")})  # fmt: skip
    return pd.DataFrame(rows)


_PROTOCOL_COLUMNS = ("dataset", "split", "unit", "num_samples", "decoding", "confidence_threshold")
_METRICS = ("gIoU", "cIoU", "N-acc", "T-acc")


def evaluate_many(
    predictors: Sequence[Predictor],
    dataset: RefDataset,
    config: EvalConfig | None = None,
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Evaluate several predictors with the same settings; one row per predictor, side by side.

    Columns: ``predictor``, the protocol (dataset, split, unit, num_samples, decoding,
    confidence_threshold), ``checkpoint``, ``step``, then ``"<metric> (<convention>)"`` for gIoU, cIoU,
    N-acc, T-acc and Pr@t of each convention. Each predictor's results are written under its own name in
    ``config.out_dir`` (``config.name`` is ignored), plus ``comparison.csv`` there. A predictor's own
    ``checkpoint`` / ``step`` attributes are used when the config leaves them unset.
    """
    config = config or EvalConfig()
    names = [p.name for p in predictors]
    if len(set(names)) != len(names):
        raise ValueError(f"predictor names must be distinct (they name the result files): {names}")
    cfg = replace(config, name="")
    if cfg.out_dir is not None:  # fail before the first (possibly long) run, not after it
        for name in names:
            check_writable(cfg.out_dir, name, cfg.conventions, cfg.overwrite)
        if (Path(cfg.out_dir) / "comparison.csv").exists() and not cfg.overwrite:
            raise FileExistsError(f"{cfg.out_dir}/comparison.csv exists; pass overwrite=True (--overwrite)")
    rows = []
    for p in predictors:
        res = evaluate(p, dataset, cfg, extra)
        first = next(iter(res.summaries.values()))
        row: dict[str, Any] = {"predictor": p.name}
        row.update({k: getattr(first.protocol, k) for k in _PROTOCOL_COLUMNS})
        row.update(checkpoint=first.protocol.extra.get("checkpoint"), step=first.protocol.extra.get("step"))
        for conv, s in res.summaries.items():
            flat = s.row()
            for k in (*_METRICS, *s.pr):
                row[f"{k} ({conv})"] = flat[k]
        rows.append(row)
    table = pd.DataFrame(rows)
    if cfg.out_dir is not None:
        atomic_write(Path(cfg.out_dir) / "comparison.csv", lambda path: table.to_csv(path, index=False))
    return table
