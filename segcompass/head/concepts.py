"""Concept interface: frozen SAE encoder → sparse support {(sample, token, atom, value)}.

The dense [T, d_sae] activation matrix is never built: tokens are encoded in chunks (temporaries
bounded by chunk × d_sae), only entries with |h| ≥ tau (optionally the top-N per token) are kept,
and the gradient of the kept values w.r.t. the hook-layer states is a sparse product
(O(nnz · d_in)) instead of the dense encoder backward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .support import ConceptSupport

logger = logging.getLogger(__name__)

#: sae-lens architectures whose encode is act(process_sae_in(x) @ W_enc + b_enc) with act the identity
#: (slope 1) on every entry that survives |h| ≥ tau > 0 — so the support values' gradient is W_enc[:, j].
LINEAR_ON_SUPPORT = frozenset(
    {"standard", "topk", "jumprelu", "batchtopk", "abstopk", "matryoshka_batchtopk"}
)


def _sae_dims(sae: nn.Module) -> tuple[int, int]:
    w = getattr(sae, "W_enc", None)
    if not isinstance(w, Tensor) or w.ndim != 2 or not isinstance(getattr(sae, "b_enc", None), Tensor):
        raise TypeError(
            "the SAE must expose W_enc [d_in, d_sae] and b_enc [d_sae] (a sae-lens SAE or the same layout); "
            f"got {type(sae).__name__}"
        )
    return int(w.shape[0]), int(w.shape[1])


def check_sae(sae: nn.Module) -> tuple[int, int]:
    """Validate that `sae` can serve the concept interface; returns (d_in, d_sae)."""
    cfg = getattr(sae, "cfg", None)
    arch_fn = getattr(cfg, "architecture", None)
    arch = arch_fn() if callable(arch_fn) else None
    if arch is not None and arch not in LINEAR_ON_SUPPORT:
        raise ValueError(
            f"SAE architecture {arch!r} is not supported by the concept interface: its activations are "
            f"not linear in W_enc on the support (supported: {sorted(LINEAR_ON_SUPPORT)})"
        )
    d_in, d_sae = _sae_dims(sae)
    if getattr(cfg, "reshape_activations", "none") != "none":
        raise ValueError("SAEs with reshape_activations (hook_z) are not supported by the concept interface")
    if not callable(getattr(sae, "encode", None)):
        raise TypeError(f"the SAE ({type(sae).__name__}) has no encode(x) method")
    return d_in, d_sae


class _SupportValues(torch.autograd.Function):
    """Values of the support entries, with the sparse encoder backward.

    forward returns the already-computed values; backward gives
    grad_sae_in[r] = Σ_e grad_v[e] · scale[atom_e] · W_enc[:, atom_e] over the entries e of row r,
    as an embedding-bag over W_encᵀ rows: O(nnz · d_in) instead of the dense O(N · d_sae · d_in).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        sae_in: Tensor,  # [N, d_in]
        rows: Tensor,  # [E], sorted
        atoms: Tensor,  # [E]
        values: Tensor,  # [E]
        w_enc_t: Tensor,  # [d_sae, d_in] contiguous
        scale: Tensor | None,  # [d_sae] or None
    ) -> Tensor:
        ctx.save_for_backward(rows, atoms, w_enc_t, scale if scale is not None else torch.empty(0))
        ctx.n_rows = sae_in.shape[0]
        ctx.has_scale = scale is not None
        return values.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_v: Tensor):  # type: ignore[override]
        rows, atoms, w_enc_t, scale = ctx.saved_tensors
        grad_in = None
        if ctx.needs_input_grad[0]:
            g = grad_v * scale[atoms] if ctx.has_scale else grad_v
            offsets = torch.searchsorted(rows, torch.arange(ctx.n_rows, device=rows.device))  # [N]
            grad_in = F.embedding_bag(
                atoms, w_enc_t, offsets, mode="sum", per_sample_weights=g.to(w_enc_t.dtype)
            )  # [N, d_in]
        return grad_in, None, None, None, None, None


@dataclass
class _Selected:
    batch: Tensor  # [N] sample index of each selected token
    token: Tensor  # [N] position of each selected token
    states: Tensor  # [N, d_in]


class ConceptInterface(nn.Module):
    """Frozen SAE encoder over the selected hook-layer token states → `ConceptSupport`.

    Args:
        sae: a sae-lens `SAE` (standard/topk/jumprelu family) or any module with `W_enc` [d_in, d_sae],
            `b_enc` and the same `encode` semantics. It is frozen here.
        tau: keep entries with |h| ≥ tau.
        top_n: optional cap on entries per token (largest |h| first).
        chunk_tokens: tokens encoded at once (bounds temporaries to chunk_tokens × d_sae).
    """

    def __init__(self, sae: nn.Module, tau: float = 2.0, top_n: int | None = None, chunk_tokens: int = 128):
        super().__init__()
        self.d_in, self.d_sae = check_sae(sae)
        self.sae = sae
        self.sae.requires_grad_(False)
        self.tau = float(tau)
        self.top_n = top_n
        self.chunk_tokens = int(chunk_tokens)
        self._w_enc_t: Tensor | None = None
        self._w_enc_t_key: tuple[int, int, torch.device, torch.dtype] | None = None

    def w_enc_t(self) -> Tensor:
        """Contiguous W_encᵀ [d_sae, d_in] for the sparse backward, cached while W_enc is unchanged.

        Built only when a gradient w.r.t. the hook states is needed (not in the default setup, where the
        layers up to the hook are frozen); it costs one extra copy of the encoder weight.
        """
        w = self.sae.W_enc
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._w_enc_t is None or self._w_enc_t_key != key:
            self._w_enc_t = w.detach().t().contiguous()
            self._w_enc_t_key = key
        return self._w_enc_t

    def _select(self, hook_states: Tensor, token_mask: Tensor | None) -> _Selected:
        if hook_states.ndim != 3:
            raise ValueError(f"hook_states must be [B, T, D], got shape {tuple(hook_states.shape)}")
        if hook_states.shape[-1] != self.d_in:
            raise ValueError(
                f"hook_states hidden size {hook_states.shape[-1]} does not match the SAE's d_in {self.d_in} "
                "(wrong backbone, hook layer or SAE?)"
            )
        b, t, _ = hook_states.shape
        if token_mask is None:
            token_mask = torch.ones(b, t, dtype=torch.bool, device=hook_states.device)
        if token_mask.shape != (b, t) or token_mask.dtype != torch.bool:
            raise ValueError(
                f"concept_token_mask must be a bool tensor of shape {(b, t)}, got "
                f"{token_mask.dtype} {tuple(token_mask.shape)}"
            )
        sel_b, sel_t = token_mask.nonzero(as_tuple=True)  # row-major: sorted by (sample, token)
        states = hook_states[sel_b, sel_t]  # [N, D]
        bad = ~torch.isfinite(states).all(dim=-1)
        if bool(bad.any()):
            n = int(bad.sum())
            first = (int(sel_b[bad][0]), int(sel_t[bad][0]))
            raise ValueError(
                f"hook_states contain NaN/inf at {n} selected token position(s), first at (sample, token)={first}"
            )
        return _Selected(sel_b, sel_t, states)

    @torch.no_grad()
    def _support_rows(self, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Chunked encode → (row, atom, value) of the kept entries, sorted by (row, atom)."""
        rows_l, atoms_l, vals_l = [], [], []
        for start in range(0, states.shape[0], self.chunk_tokens):
            acts = self.sae.encode(states[start : start + self.chunk_tokens])  # [c, d_sae], bounded
            mag = acts.abs()
            if self.top_n is not None:
                n = min(self.top_n, acts.shape[-1])
                top_mag, top_atom = mag.topk(n, dim=-1)  # [c, n]
                keep = top_mag >= self.tau
                r = torch.arange(acts.shape[0], device=acts.device).unsqueeze(1).expand_as(top_atom)[keep]
                a = top_atom[keep]
                order = torch.argsort(r * acts.shape[-1] + a)
                r, a = r[order], a[order]
            else:
                r, a = (mag >= self.tau).nonzero(as_tuple=True)
            rows_l.append(r + start)
            atoms_l.append(a)
            vals_l.append(acts[r, a])
            del acts, mag
        if not rows_l:
            empty = torch.empty(0, dtype=torch.long, device=states.device)
            return empty, empty.clone(), torch.empty(0, dtype=self.sae.W_enc.dtype, device=states.device)
        return torch.cat(rows_l), torch.cat(atoms_l), torch.cat(vals_l)

    def _value_scale(self) -> Tensor | None:
        cfg = getattr(self.sae, "cfg", None)
        if getattr(cfg, "rescale_acts_by_decoder_norm", False):
            return self.sae.W_dec.norm(dim=-1).detach()
        return None

    def encode(self, hook_states: Tensor, token_mask: Tensor | None = None) -> ConceptSupport:
        """Sparse SAE support of the tokens selected by `token_mask`.

        Args:
            hook_states: [B, T, D] hook-layer states (gradients flow to them through the values).
            token_mask: [B, T] bool, True for the tokens whose concepts enter the head (image,
                instruction, CoT); None selects all.
        Returns:
            `ConceptSupport` with entries sorted by (sample, token, atom).
        """
        sel = self._select(hook_states, token_mask)
        rows, atoms, values = self._support_rows(sel.states.detach())
        if sel.states.requires_grad and torch.is_grad_enabled():
            sae_in = (
                self.sae.process_sae_in(sel.states) if hasattr(self.sae, "process_sae_in") else sel.states
            )
            values = _SupportValues.apply(sae_in, rows, atoms, values, self.w_enc_t(), self._value_scale())
        return ConceptSupport(
            batch_idx=sel.batch[rows],
            token_idx=sel.token[rows],
            atom_idx=atoms,
            values=values,
            batch_size=hook_states.shape[0],
        )

    def forward(self, hook_states: Tensor, token_mask: Tensor | None = None) -> ConceptSupport:
        """Alias of `encode`."""
        return self.encode(hook_states, token_mask)
