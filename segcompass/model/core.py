"""`SegCompassModel`: the policy (a backbone) and the head as one module — forward, predict, save, load.

Saved layout (a folder)::

    backbone/                 Backbone.save (HF save_pretrained + segcompass.json), loads with load_backbone
    sae/                      the frozen SAE (sae-lens format, SAE.load_from_disk)
    head.safetensors          the head's weights without the SAE (incl. its frozen SAM image encoder)
    segcompass_model.json     head config, policy config, format version, provenance of the weights
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sae.files import apply_umask_tree, atomic_write, atomic_write_text
from segcompass.backbones import Backbone, load_backbone
from segcompass.head import HeadConfig, HeadOutput, LossConfig, SamDecoderConfig, SamEncoderConfig, build_head
from segcompass.head.model import SegCompassHead
from segcompass.policy import PolicyConfig, PolicyStates, Rollouts, policy_forward

from .lora import has_lora, lora_scaling, merge_lora_state

logger = logging.getLogger(__name__)

MODEL_FILE = "segcompass_model.json"
FORMAT_VERSION = 1


@dataclass
class ModelOutput:
    """Policy states and head output of one forward over N responses."""

    states: PolicyStates
    """Log-probs, hook states, concentration states of the N responses."""
    head: HeadOutput
    """Slot heatmaps, confidences, masks (and losses when targets were given)."""


class SegCompassModel(nn.Module):
    """Policy + head. ``forward(rollouts, image_embeddings, targets)`` runs the one policy forward and the
    head on its states; ``backbone`` keeps the processor and the family knowledge."""

    def __init__(self, backbone: Backbone, head: SegCompassHead, policy: PolicyConfig):
        super().__init__()
        if backbone.hidden_size != head.cfg.d_in:
            raise ValueError(
                f"backbone hidden size {backbone.hidden_size} != head d_in {head.cfg.d_in} (SAE for another model?)"
            )
        if policy.num_slots != head.cfg.num_slots:
            raise ValueError(f"policy num_slots {policy.num_slots} != head num_slots {head.cfg.num_slots}")
        if policy.head_concentration_mode != head.cfg.concentration_mode:
            raise ValueError(
                f"policy mode {policy.mode!r} needs head concentration_mode "
                f"{policy.head_concentration_mode!r}, got {head.cfg.concentration_mode!r}"
            )
        self.llm = backbone.model
        self.head = head
        self.policy = policy
        self._backbone = backbone

    @property
    def backbone(self) -> Backbone:
        return self._backbone

    def forward(
        self,
        rollouts: Rollouts,
        image_embeddings: Tensor,
        targets: list[Tensor] | None = None,
        step: int = 0,
        llm_grad_scale: float = 1.0,
        loss_responses: str = "all",
    ) -> ModelOutput:
        """image_embeddings [N, 256, g, g] (one per response), targets N × [n_i, S, S].

        `llm_grad_scale` scales the gradient the head's losses send into the LLM through the concentration
        states (values unchanged; 1: the paper's joint objective, 0: they train the head only).
        `loss_responses`: ``"all"`` responses enter the head's losses, or only the ``"complete"`` ones — those
        that hold all their concentration tokens (K in multi mode, one in single mode); the head still runs
        on every response (rewards read it). With none complete, `head.losses` stays None."""
        if loss_responses not in ("all", "complete"):
            raise ValueError(f"loss_responses must be 'all' or 'complete', got {loss_responses!r}")
        states = policy_forward(self._backbone, rollouts, self.policy)
        # The head runs in fp32 on the policy's device, whatever the LLM's dtype (bf16 on GPUs); the casts
        # keep the graph, so L_seg still reaches the LLM in its own dtype.
        slot_states = states.concentration_states.float()  # [N, K, D]
        if llm_grad_scale != 1.0:
            slot_states = slot_states * llm_grad_scale + slot_states.detach() * (1.0 - llm_grad_scale)
        device = slot_states.device
        selective = targets is not None and loss_responses == "complete"
        out = self.head(
            states.hook_states.float(),
            states.concept_token_mask,
            slot_states,
            image_embeddings.to(device=device, dtype=torch.float32),
            None if selective else targets,
            step=step,
        )
        if selective:
            rows = torch.nonzero(states.concentration_found >= self.policy.head_slots).flatten().tolist()
            if rows:  # the losses of the complete responses only (each sample's loss is its own)
                part = dataclasses.replace(
                    out,
                    slot_heatmaps=out.slot_heatmaps[rows],  # [n, K, S, S]
                    slot_confidence_logits=out.slot_confidence_logits[rows],  # [n, K]
                    slot_masks=out.slot_masks[rows],  # [n, K, S, S]
                )
                self.head.attach_losses(part, [targets[i] for i in rows], step)
                out.losses = part.losses
        return ModelOutput(states, out)

    # ------------------------------------------------------------------------------ persistence
    def save(
        self,
        path: str | os.PathLike,
        extra: dict[str, Any] | None = None,
        state_dict: dict[str, Tensor] | None = None,
    ) -> Path:
        """Write the folder layout of the module docstring (files replaced atomically one by one).

        `state_dict`: the model's full state dict gathered beforehand (a sharded run; keys `llm.*`, `head.*`);
        default: this process's own. LoRA adapters are merged into their base weights (plain names)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        full = state_dict if state_dict is not None else self.state_dict()
        llm_state = None  # the backbone's own state dict
        if state_dict is not None or has_lora(self.llm):
            llm_state = {k.removeprefix("llm."): v for k, v in full.items() if k.startswith("llm.")}
            if has_lora(self.llm):
                llm_state = merge_lora_state(llm_state, lora_scaling(self.llm))
        self._backbone.save(path / "backbone", state_dict=llm_state)
        self.head.concepts.sae.save_model(str(path / "sae"))
        state = {k.removeprefix("head."): v.detach().cpu().contiguous() for k, v in full.items()
                 if k.startswith("head.") and not k.startswith("head.concepts.")}  # fmt: skip
        atomic_write(path / "head.safetensors", lambda tmp: save_file(state, str(tmp)))
        meta = {
            "format_version": FORMAT_VERSION,
            "head": asdict(self.head.cfg),
            "policy": asdict(self.policy),
            "has_image_encoder": self.head.image_encoder is not None,
            **(extra or {}),
        }
        apply_umask_tree(path)  # safetensors (backbone, SAE) writes 0600 whatever the umask
        atomic_write_text(path / MODEL_FILE, json.dumps(meta, indent=2, default=str))
        return path


def head_config_from_dict(data: dict[str, Any]) -> HeadConfig:
    """Inverse of `dataclasses.asdict(HeadConfig)` (nested configs and tuples restored)."""
    plain = {k: v for k, v in data.items() if k not in ("sam_encoder", "sam_decoder", "loss")}
    enc = {**data["sam_encoder"], "global_attn_indexes": tuple(data["sam_encoder"]["global_attn_indexes"])}
    return HeadConfig(
        **plain,
        sam_encoder=SamEncoderConfig(**enc),
        sam_decoder=SamDecoderConfig(**data["sam_decoder"]),
        loss=LossConfig(**data["loss"]),
    )


_OPTIONAL_HEAD_BUFFERS = ("fusion.concentration_mean", "fusion.concentration_scale")


def load_model(path: str | os.PathLike, device: str = "cpu") -> SegCompassModel:
    """Load a folder written by `SegCompassModel.save` (or a training run's `final/` / checkpoint)."""
    from sae.saved import load_sae

    path = Path(path)
    if (path / "final" / MODEL_FILE).exists():
        path = path / "final"
    meta_file = path / MODEL_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} holds no SegCompass model (no {MODEL_FILE})")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model format {meta.get('format_version')} is not {FORMAT_VERSION}")
    backbone = load_backbone(str(path / "backbone"))
    sae, _ = load_sae(path / "sae", device=device)
    head = build_head(head_config_from_dict(meta["head"]), sae, image_encoder=meta["has_image_encoder"])
    state = load_file(str(path / "head.safetensors"))
    missing, unexpected = head.load_state_dict(state, strict=False)
    # the SAE comes from sae/; models saved before e_k standardisation existed load with it off
    missing = [k for k in missing if not k.startswith("concepts.") and k not in _OPTIONAL_HEAD_BUFFERS]
    if missing or unexpected:
        raise ValueError(
            f"{path}/head.safetensors does not fit the head: missing {missing}, unexpected {unexpected}"
        )
    policy = PolicyConfig(
        **{**meta["policy"], "concept_token_types": tuple(meta["policy"]["concept_token_types"])}
    )
    model = SegCompassModel(backbone, head, policy).to(device)
    model.eval()
    return model


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts: trainable vs frozen."""
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": train, "frozen": frozen}
