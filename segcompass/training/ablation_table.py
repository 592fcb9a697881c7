"""The ablation's result rows and its report (`segcompass ablation`, `results/training_ablation.md`): a
verdict first, then the paper's ordering per seed and split, then mean ± sd tables per held-out split."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pandas as pd

from segcompass.evaluation import calibrate_thresholds, evaluate

if TYPE_CHECKING:
    from segcompass.evaluation import EvalConfig, EvalResult

    from .ablation import AblationConfig

logger = logging.getLogger(__name__)

GIOU = "gIoU (rela)"
"""The headline column: gIoU under the gRefCOCO convention (no-target samples score 1 when left empty)."""
PAPER_ORDER = ("joint", "seg", "rl")
"""The paper's ordering of the arms, best first (ReasonSeg cIoU 66.5 joint ≥ 59.3 seg only ≥ 40.1 RL only)."""
GIOU_TARGET, UNION_MARGIN, ACC_TARGET, FORMAT_TARGET = 0.55, 0.20, 0.80, 0.95
"""The joint arm's targets: gIoU and cIoU ≥ 0.55 and ≥ the union baseline's + 0.20; N-acc and T-acc ≥ 0.80;
greedy format ≥ 0.95."""

KIND_PREFIX = "gIoU · "
"""Prefix of the per-instruction-kind gIoU columns (rela convention), e.g. "gIoU · plain"."""


def table_row(result: EvalResult, arm: str, seed: int | None, extra: dict) -> dict:
    """One model's row: gIoU / cIoU per convention, N-acc / T-acc (rela), greedy format reward, gIoU per
    instruction kind (rela; when the data set records kinds) and `extra`."""
    row = {"arm": arm, "seed": seed, **extra}
    for conv, summary in result.summaries.items():
        row[f"gIoU ({conv})"] = summary.giou
        row[f"cIoU ({conv})"] = summary.ciou
        if conv == "rela":
            row["N-acc (rela)"], row["T-acc (rela)"] = summary.n_acc, summary.t_acc
    per = result.per_sample
    if "extra_format_reward" in per or "format_reward" in per:
        col = "format_reward" if "format_reward" in per else "extra_format_reward"
        row["format (greedy)"] = float(per[col].mean())
    if "kind" in per and "convention" in per:
        rela = per[(per["convention"] == "rela") & per["kind"].notna()]
        for kind, iou in rela.groupby("kind")["iou"].mean().items():
            row[f"{KIND_PREFIX}{kind}"] = float(iou)
    return row


class _Replay:
    """A predictor that decodes each sample once and replays its prediction when asked again (greedy
    decoding is deterministic, so scoring a split at two threshold pairs needs one pass of the policy)."""

    def __init__(self, predictor) -> None:
        self.inner, self.name, self.seen = predictor, predictor.name, {}

    def predict(self, samples):
        new = [s for s in samples if s.sample_id not in self.seen]
        if new:
            self.seen.update((p.sample_id, p) for p in self.inner.predict(new))
        return [self.seen[s.sample_id] for s in samples]


def scored_rows(
    predictor, held_out: dict, calib_set, ev: EvalConfig, arm: str, seed: int | None, extra: dict
) -> list[dict]:
    """One model's rows, one per held-out split (`held_out`: split name → dataset): its metrics at the mask /
    confidence thresholds chosen on `calib_set` (if any), plus gIoU at the 0.5 / 0.5 defaults and the chosen
    thresholds."""
    predictor = _Replay(predictor)
    if calib_set is None:
        return [
            table_row(evaluate(predictor, d, ev), arm, seed, {"split": s, **extra})
            for s, d in held_out.items()
        ]
    cal = calibrate_thresholds(predictor, calib_set, ev)
    logger.info("%s seed %s: thresholds mask %.2f / confidence %.2f (calib gIoU %.3f vs %.3f at 0.5 / 0.5)",
                arm, seed, cal.mask_threshold, cal.confidence_threshold, cal.value, cal.default_value)  # fmt: skip
    rows = []
    for split, dataset in held_out.items():
        default = evaluate(predictor, dataset, ev).summaries["rela"].giou
        chosen = {"gIoU at 0.5 / 0.5 (rela)": default, "mask thr": cal.mask_threshold,
                  "conf thr": cal.confidence_threshold}  # fmt: skip
        result = evaluate(predictor, dataset, cal.apply(ev))
        rows.append(table_row(result, arm, seed, {"split": split, **extra, **chosen}))
    return rows


def _markdown(table: pd.DataFrame, columns: list[str]) -> str:
    grouped = table.groupby("arm", sort=False)[columns]
    mean, sd = grouped.mean(), grouped.std()
    lines = ["| arm | n | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for arm in mean.index:
        n = int(grouped.size()[arm])
        cells = [
            "" if pd.isna(mean.loc[arm, c]) else
            (f"{mean.loc[arm, c]:.3f}" + (f" ± {sd.loc[arm, c]:.3f}" if n > 1 and not pd.isna(sd.loc[arm, c]) else ""))
            for c in columns
        ]  # fmt: skip
        lines.append(f"| {arm} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _splits(table: pd.DataFrame) -> list:
    return list(table["split"].unique()) if "split" in table else [None]


def _in_split(table: pd.DataFrame, split) -> pd.DataFrame:
    return table if split is None else table[table["split"] == split]


def ordering_table(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's ordering checked per held-out split and seed: each arm's gIoU (rela), the union baseline's,
    and whether joint ≥ seg only ≥ RL only holds. Only seeds that ran all three arms."""
    rows = []
    for split in _splits(table) if GIOU in table else []:
        part = _in_split(table, split)
        union = part.loc[part["arm"] == "union_baseline", GIOU]
        arms = part[part["arm"].isin(PAPER_ORDER)].pivot_table(index="seed", columns="arm", values=GIOU)
        if not all(a in arms for a in PAPER_ORDER):
            continue
        for seed, g in arms.dropna().iterrows():
            holds = bool(g["joint"] >= g["seg"] >= g["rl"])
            rows.append(
                {"split": split, "seed": int(seed), **{a: float(g[a]) for a in PAPER_ORDER},
                 "union": float(union.iloc[0]) if len(union) else float("nan"), "holds": holds}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=["split", "seed", *PAPER_ORDER, "union", "holds"])


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _joint_line(joint: pd.DataFrame, part: pd.DataFrame) -> str:
    """The joint arm against its targets on one split (mean over seeds), beside the union baseline."""
    union = part[part["arm"] == "union_baseline"].iloc[0]
    g, c, ug, uc = joint[GIOU].mean(), joint["cIoU (rela)"].mean(), union[GIOU], union["cIoU (rela)"]
    n_acc, t_acc = joint["N-acc (rela)"].mean(), joint["T-acc (rela)"].mean()
    ok = min(g, c) >= GIOU_TARGET and g >= ug + UNION_MARGIN and c >= uc + UNION_MARGIN
    n = len(joint)
    spread = f", gIoU {joint[GIOU].min():.3f}–{joint[GIOU].max():.3f}" if n > 1 else ""
    line = (
        f"joint gIoU **{g:.3f}** / cIoU {c:.3f} ({n} seed{'s' if n > 1 else ''}{spread}) against the union of "
        f"objects' {ug:.3f} / {uc:.3f}: ≥ {GIOU_TARGET:.2f} and ≥ union + {UNION_MARGIN:.2f} {_met(ok)}; "
        f"N-acc {n_acc:.2f} with T-acc {t_acc:.2f} (both ≥ {ACC_TARGET:.2f}) "
        f"{_met(min(n_acc, t_acc) >= ACC_TARGET)}"
    )
    if "format (greedy)" in joint:
        fmt = joint["format (greedy)"].mean()
        line += f"; greedy format {fmt:.2f} (≥ {FORMAT_TARGET}) {_met(fmt >= FORMAT_TARGET)}"
    return line + "."


def ablation_verdict(table: pd.DataFrame, order: pd.DataFrame | None = None) -> str:
    """One line per held-out split on the joint arm's targets, then one on the paper's ordering (`order`:
    `ordering_table(table)`, computed when not given); every figure is read from `table`."""
    if not {GIOU, "cIoU (rela)", "N-acc (rela)", "T-acc (rela)"} <= set(table.columns):
        return ""
    lines = []
    for split in _splits(table):
        part = _in_split(table, split)
        joint = part[part["arm"] == "joint"]
        if joint.empty or not (part["arm"] == "union_baseline").any():
            continue
        name = f"{split} split" if split is not None else "held out"
        lines.append(f"- {name}: " + _joint_line(joint, part))
    order = ordering_table(table) if order is None else order
    if len(order):
        lines.append(
            f"- The paper's ordering (joint ≥ seg only ≥ RL only) holds on **{int(order['holds'].sum())} of "
            f"{len(order)}** (split, seed) pairs."
        )
    return "**Verdict**\n\n" + "\n".join(lines) + "\n\n" if lines else ""


def _ordering_markdown(order: pd.DataFrame) -> str:
    lines = [
        "| split | seed | joint | seg only | RL only | union | joint ≥ seg ≥ RL |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in order.itertuples():
        cells = [f"{getattr(r, a):.3f}" for a in PAPER_ORDER]
        split = "held out" if r.split is None else r.split
        lines.append(
            f"| {split} | {r.seed} | "
            + " | ".join(cells)
            + f" | {r.union:.3f} | {'yes' if r.holds else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def ablation_markdown(table: pd.DataFrame, cfg: AblationConfig) -> str:
    """The report: the verdict, what was run, the ordering per (split, seed), then per held-out split the mean
    ± sd over seeds per arm (main metrics, then gIoU per instruction kind when recorded)."""
    num = [c for c in table.columns if c not in ("arm", "seed", "split")]
    kinds = [c for c in num if c.startswith(KIND_PREFIX)]
    t = cfg.train
    head = (
        f"Synthetic world (seed {cfg.world_seed}): {cfg.train_samples} train / {cfg.val_samples} held-out val / "
        f"{cfg.test_samples} held-out test / {cfg.calibration_samples} calibration samples; "
        f"backbone {cfg.backbone}; SAM {cfg.sam or 'random init'}; head warm start {cfg.head_warmup_steps} steps "
        f"on {cfg.head_warmup_samples} greedy-decoded prompts; then "
        f"{t.steps} steps × {t.prompts_per_step} prompts × G {t.group_size}, lr {t.lr}"
        f" (head multipliers × {cfg.head_lr_scale}; head losses' gradient into the LLM × {t.head_loss_llm_grad};"
        f" head EMA decay {t.head_ema_decay}; head losses on {t.head_loss_responses} responses); "
        "greedy evaluation, one sample per sentence, masks scored in the image frame"
        + (", at mask / confidence thresholds chosen on the calibration split (gIoU, rela)"
           if cfg.calibration_samples else "")
        + ".\n\n"
    )  # fmt: skip
    order = ordering_table(table)
    md = ablation_verdict(table, order) + head
    if len(order):
        md += (
            "The paper's ordering per held-out split and seed (gIoU, rela):\n\n"
            + _ordering_markdown(order)
            + "\n"
        )
    for split in _splits(table):
        part = _in_split(table, split)
        if split is not None:
            md += f"### {split}\n\n"
        md += _markdown(part, [c for c in num if c not in kinds])
        if kinds:
            md += f"\nHeld-out gIoU (rela) by instruction kind{'' if split is None else f' ({split})'}:\n\n"
            md += _markdown(part, kinds)
        md += "\n"
    return md
