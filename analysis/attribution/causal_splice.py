"""The causal check through the backbone: splice the SAE reconstruction minus the removed atoms' decoder
contributions into the backbone at the hook layer (nnsight), so later layers — and the concentration-token
states the slot queries come from — see the ablation too.

Same splice as `sae.evaluation.splice` (both through `sae.splice.HookLayer`): under an nnsight trace the output of decoder block L − 1
(= HF `hidden_states[L]`, the SAE's input) is replaced by `sae.decode(acts)`, where `acts = sae.encode(h)`
with the removed atoms zeroed (per sample, at the chosen positions). With nothing removed this is exactly
the plain-reconstruction splice. The reference of the check is that nothing-removed splice, so the SAE's own
reconstruction error is not counted as an effect of the removed atoms.

The backbone is duck-typed like `sae.evaluation.splice`: `.model`, `.processor`, `.decoder_layers`,
`.hook_layer`; inputs are the model's keyword arguments (`PreparedBatch.inputs`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from analysis.attribution.causal import CausalConfig, CausalResult, Reference, causal_summary, plan_jobs
from analysis.attribution.core import AttributionConfig, attribute, slot_objectives
from analysis.attribution.head_inputs import HeadInputs
from analysis.attribution.support_filter import AtomRemoval
from sae.splice import HookLayer, check_sae_fits
from sae.token_types import TokenType

logger = logging.getLogger(__name__)


class SpliceStates(NamedTuple):
    """States of one spliced backbone forward (B samples, T positions, D width, V vocabulary)."""

    hook_clean: Tensor
    """[B, T, D] the hook layer's own output before the splice (the SAE's input, HF hidden_states[L])."""
    hook_spliced: Tensor
    """[B, T, D] what was spliced in: the reconstruction minus the removed atoms."""
    final: Tensor
    """[B, T, D] HF hidden_states[-1] of the spliced forward (where the concentration states come from)."""
    logits: Tensor
    """[B, T, V] output logits of the spliced forward."""


def reconstruction_without(
    sae: Any, states: Tensor, removal: AtomRemoval | None = None, positions: Tensor | None = None
) -> Tensor:
    """`sae.decode(acts)` with `acts = sae.encode(states)` and the atoms of `removal` zeroed.

    Args:
        states: [B, T, D] hook-layer states.
        removal: per sample, the atoms to zero (and optionally the token positions; default every position).
        positions: optional [B, T] bool restricting the removal to these positions (e.g. the concept mask).

    The dense activations of the whole batch are built at once, as `sae.evaluation.splice` does
    (B·T × d_sae floats: 1 GiB for 4 × 1000 tokens at d_sae 65536), so that removing nothing reproduces
    the plain-reconstruction splice bit for bit.
    """
    b, t, d = states.shape
    param = next(sae.parameters())
    acts = sae.encode(states.reshape(-1, d).to(param.device, param.dtype))  # [B·T, d_sae]
    if removal is not None and removal.atoms:
        acts = acts.reshape(b, t, -1).clone()
        for sample, atoms in removal.atoms.items():
            if not 0 <= int(sample) < b:
                raise ValueError(f"sample index {sample} is out of range for a batch of {b}")
            where = torch.ones(t, dtype=torch.bool, device=acts.device)
            if positions is not None:
                where &= positions[int(sample)].to(acts.device)
            if removal.tokens is not None and int(sample) in removal.tokens:
                only = torch.zeros_like(where)
                only[list(removal.tokens[int(sample)])] = True
                where &= only
            cols = torch.as_tensor(list(atoms), dtype=torch.long, device=acts.device)
            rows = where.nonzero().squeeze(1)
            acts[int(sample), rows[:, None], cols[None, :]] = 0
        acts = acts.reshape(b * t, -1)
    return sae.decode(acts).to(states.dtype).reshape(states.shape)


class BackboneSplicer:
    """Runs the backbone with the (ablated) SAE reconstruction spliced in at the hook layer."""

    def __init__(self, backbone: Any, sae: Any) -> None:
        check_sae_fits(backbone, sae)
        self.sae = sae
        self.hook = HookLayer(backbone)

    @torch.no_grad()
    def run(
        self, inputs: Mapping[str, Any], removal: AtomRemoval | None = None, positions: Tensor | None = None
    ) -> SpliceStates:
        """One forward with `reconstruction_without(sae, h, removal, positions)` spliced in."""
        with self.hook.lm.trace(**inputs, output_hidden_states=True):
            clean, spliced = self.hook.splice(
                lambda h: reconstruction_without(self.sae, h, removal, positions)
            )
            clean_saved, spliced_saved = clean.save(), spliced.save()
            final = self.hook.lm.output.hidden_states[-1].save()
            logits = self.hook.lm.output.logits.save()
        return SpliceStates(clean_saved, spliced_saved, final, logits)


@dataclass
class ConcentrationInputs:
    """The default `SpliceStates → HeadInputs`: the clean hook states (the support filter removes the atoms
    from the head's own support), the last K concentration-token states of the spliced forward, and every
    labelled position of `concept_types` as concept tokens."""

    token_types: Tensor
    """[B, T] `TokenType` per position (`PreparedBatch.token_types`)."""
    image_embeddings: Tensor
    """[B, 256, 64, 64] SAM embeddings of the images."""
    num_slots: int
    """K: concentration states taken per sample (the last K CONCENTRATION positions)."""
    concept_types: tuple[TokenType, ...] = (
        TokenType.SPECIAL,
        TokenType.IMAGE,
        TokenType.INSTRUCTION,
        TokenType.COT,
        TokenType.RESPONSE,
    )
    """Token types whose concepts enter the head."""
    extra: Mapping[str, Any] | None = None
    """Further `HeadInputs` fields (targets, tokens, images, sample_ids)."""

    def __call__(self, states: SpliceStates) -> HeadInputs:
        tt = self.token_types.to(states.final.device)
        conc = []
        for b in range(tt.shape[0]):
            pos = (tt[b] == int(TokenType.CONCENTRATION)).nonzero().squeeze(1)
            if pos.numel() < self.num_slots:
                raise ValueError(
                    f"sample {b} has {pos.numel()} concentration tokens; the head needs {self.num_slots}"
                )
            conc.append(states.final[b, pos[-self.num_slots :]])
        mask = torch.isin(tt, torch.tensor([int(t) for t in self.concept_types], device=tt.device))
        return HeadInputs(
            states.hook_clean, torch.stack(conc), self.image_embeddings, mask, **dict(self.extra or {})
        )


@torch.no_grad()
def splice_causal_check(
    head: nn.Module,
    backbone: Any,
    sae: Any,
    model_inputs: Mapping[str, Any],
    make_head_inputs: Callable[[SpliceStates], HeadInputs],
    cfg: CausalConfig | None = None,
    attribution_cfg: AttributionConfig | None = None,
    *,
    filter_support: bool = True,
) -> CausalResult:
    """The causal check with the ablation spliced into the backbone (see the module docstring).

    Args:
        head: the head (eval mode); its SAE should be `sae`.
        backbone: the backbone the head sits on (`segcompass.backbones.Backbone` or same duck type).
        sae: the SAE at the backbone's hook layer.
        model_inputs: the backbone's forward kwargs (`PreparedBatch.inputs`), the full sequence including
            the CoT and concentration tokens.
        make_head_inputs: builds the head's inputs from a spliced forward (e.g. `ConcentrationInputs`).
        filter_support: also remove the atoms from the head's own sparse support (as `causal_check`);
            False measures only the effect that travels through the backbone.
    Returns:
        `CausalResult`; the reference (attribution, unablated masks) is the nothing-removed splice.
    """
    cfg = cfg or CausalConfig()
    splicer = BackboneSplicer(backbone, sae)
    ref_inputs = make_head_inputs(splicer.run(model_inputs))
    positions = ref_inputs.concept_token_mask
    with torch.enable_grad():
        attribution = attribute(head, ref_inputs, attribution_cfg)
    reference = Reference(attribution, ref_inputs.targets)
    groups: dict[tuple, list] = defaultdict(list)
    for job in plan_jobs(attribution, cfg, ref_inputs.batch_size):
        groups[(job.slot, job.n, job.variant, job.draw)].append(job)  # one backbone forward per group
    rows = []
    for jobs in tqdm(groups.values(), desc="spliced causal check", unit="forward", disable=not cfg.progress):
        removal = AtomRemoval({job.sample: job.atoms for job in jobs})
        inputs = make_head_inputs(splicer.run(model_inputs, removal, positions))
        out = inputs.forward(head, removal if filter_support else None)
        objective = slot_objectives(out, reference.kind, reference.regions)
        rows += [
            reference.row(job, out, job.sample, objective, ref_inputs.sample_id(job.sample)) for job in jobs
        ]
    table = pd.DataFrame(rows)
    summary = causal_summary(table, n_boot=cfg.n_boot, confidence=cfg.confidence, seed=cfg.seed)
    return CausalResult(table, summary, attribution)
