"""The ablation's result rows and Markdown tables (`segcompass ablation`, `results/training_ablation.md`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from segcompass.evaluation import EvalResult

    from .ablation import AblationConfig

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


def ablation_markdown(table: pd.DataFrame, cfg: AblationConfig) -> str:
    """Mean ± sd over seeds per arm: the main metrics, then gIoU per instruction kind (when recorded)."""
    num = [c for c in table.columns if c not in ("arm", "seed")]
    kinds = [c for c in num if c.startswith(KIND_PREFIX)]
    t = cfg.train
    head = (
        f"Synthetic world (seed {cfg.world_seed}): {cfg.train_samples} train / {cfg.val_samples} held-out val / "
        f"{cfg.calibration_samples} calibration samples; "
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
    md = head + _markdown(table, [c for c in num if c not in kinds])
    if kinds:
        md += "\nHeld-out gIoU (rela) by instruction kind:\n\n" + _markdown(table, kinds)
    return md
