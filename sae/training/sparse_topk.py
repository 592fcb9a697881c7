"""TopK training with a sparse decoder and a sparse encoder backward (DESIGN §10).

sae-lens's `TopKTrainingSAE` keeps the TopK activations as a dense [T, d_sae] matrix (or, with
`use_sparse_activations`, a COO tensor for the decoder product only): its decoder forward and backward and the
encoder's weight gradient each cost O(T·d_sae·d_in). Only k of the d_sae activations of a token are non-zero,
so after the one unavoidable dense product (the encoder pre-activations, needed to choose the top k) the
rest can be O(T·k·d_in):

- `topk_select` (an autograd function) computes the pre-activations in row chunks, keeps only the selected
  (token, atom) entries, and in backward scatters their gradients into W_enc and b_enc with `index_add_`,
  again in row chunks, so that no temporary exceeds `chunk_elements` floats;
- the decoder is `F.embedding_bag(indices, W_dec, per_sample_weights=acts, mode="sum")`.

`SparseTopKTrainingSAE` is a drop-in `TopKTrainingSAE` (same config fields, architecture "topk", same
saved format, same loss including the dead-latent auxiliary loss); only `training_forward_pass` differs.
The tests check its loss, output and parameter gradients against sae-lens's dense implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput


class _TopKSelect(torch.autograd.Function):
    """(x, W_enc, b_enc) → pre-activations at the top-k atoms (and at the top-k_aux dead atoms)."""

    @staticmethod
    def forward(ctx: Any, x, W_enc, b_enc, scale, k, dead_mask, k_aux, chunk_rows):  # type: ignore[override]
        n = x.shape[0]
        idx = torch.empty(n, k, dtype=torch.long, device=x.device)
        pre = torch.empty(n, k, dtype=x.dtype, device=x.device)
        aux_idx = torch.empty(n, k_aux, dtype=torch.long, device=x.device)
        aux_pre = torch.empty(n, k_aux, dtype=x.dtype, device=x.device)
        for a in range(0, n, chunk_rows):
            h = torch.addmm(b_enc, x[a : a + chunk_rows], W_enc)
            score = h * scale if scale is not None else h
            sel = score.topk(k, dim=-1, sorted=False).indices
            idx[a : a + chunk_rows], pre[a : a + chunk_rows] = sel, h.gather(1, sel)
            if k_aux:
                dead_score = score.masked_fill(~dead_mask, float("-inf"))
                sel = dead_score.topk(k_aux, dim=-1, sorted=False).indices
                aux_idx[a : a + chunk_rows], aux_pre[a : a + chunk_rows] = sel, h.gather(1, sel)
        ctx.save_for_backward(x, W_enc, idx, aux_idx)
        ctx.chunk_rows = chunk_rows
        ctx.mark_non_differentiable(idx, aux_idx)
        return pre, idx, aux_pre, aux_idx

    @staticmethod
    def backward(ctx: Any, g_pre, _g_idx, g_aux, _g_aux_idx):  # type: ignore[override]
        x, W_enc, idx, aux_idx = ctx.saved_tensors
        if aux_idx.shape[1]:
            idx, g = torch.cat([idx, aux_idx], 1), torch.cat([g_pre, g_aux], 1)
        else:
            g = g_pre
        n, kk = idx.shape
        d_in, d_sae = W_enc.shape
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(
                0, idx.flatten(), g.flatten()
            )
        if ctx.needs_input_grad[1]:
            # dW_enc[:, j] = Σ_{(t, s): idx[t, s] = j} g[t, s] · x_t, accumulated row-major as dW_enc^T.
            grad_wt = torch.zeros(d_sae, d_in, dtype=x.dtype, device=x.device)
            rows = max(1, ctx.chunk_rows * W_enc.shape[1] // max(1, kk * d_in))
            for a in range(0, n, rows):
                xs, gs, js = x[a : a + rows], g[a : a + rows], idx[a : a + rows]
                contrib = (gs.unsqueeze(-1) * xs.unsqueeze(1)).reshape(-1, d_in)
                grad_wt.index_add_(0, js.flatten(), contrib)
            grad_w = grad_wt.t()
        if ctx.needs_input_grad[0]:
            # dx_t = Σ_s g[t, s] · W_enc[:, idx[t, s]]
            grad_x = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        return grad_x, grad_w, grad_b, None, None, None, None, None


def topk_select(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    *,
    scale: torch.Tensor | None = None,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    chunk_elements: int = 1 << 24,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k atoms of `(x @ W_enc + b_enc) * scale` per row: (pre-activations before `scale` [T, k],
    indices [T, k], and the same for the top `k_aux` atoms among `dead_mask`). Differentiable in x, W_enc
    and b_enc; the choice of atoms is not (as in any TopK)."""
    chunk_rows = max(1, chunk_elements // W_enc.shape[1])
    scale = scale.detach() if scale is not None else None
    return _TopKSelect.apply(x, W_enc, b_enc, scale, int(k), dead_mask, int(k_aux), chunk_rows)


def sparse_decode(acts: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Σ_s acts[t, s] · W_dec[idx[t, s]] without a dense [T, d_sae] matrix (no b_dec)."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum")


@dataclass
class SparseTopKTrainingSAEConfig(TopKTrainingSAEConfig):
    """sae-lens's TopK training config plus the chunk bound of the sparse kernels (architecture "topk")."""

    sparse_chunk_elements: int = 1 << 24


class SparseTopKTrainingSAE(TopKTrainingSAE):
    """`TopKTrainingSAE` whose training step uses `topk_select` and `sparse_decode` (same loss)."""

    cfg: SparseTopKTrainingSAEConfig  # type: ignore[assignment]

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        x = step_input.sae_in
        sae_in = self.process_sae_in(x)
        rescale = self.cfg.rescale_acts_by_decoder_norm
        norm = self.W_dec.norm(dim=-1) if rescale else None
        dead = step_input.dead_neuron_mask
        num_dead = int(dead.sum()) if dead is not None else 0
        k_aux = min(x.shape[-1] // 2, num_dead)
        pre, idx, aux_pre, aux_idx = topk_select(
            sae_in,
            self.W_enc,
            self.b_enc,
            int(self.cfg.k),
            scale=norm,
            dead_mask=dead,
            k_aux=k_aux,
            chunk_elements=self.cfg.sparse_chunk_elements,
        )
        if norm is not None:
            picked = norm[idx]
            acts = (pre * picked).relu()
            weights = acts / picked
        else:
            acts = weights = pre.relu()
        recons = sparse_decode(weights, idx, self.W_dec) + self.b_dec
        sae_out = self.run_time_activation_norm_fn_out(self.hook_sae_recons(recons))
        mse_loss = self.mse_loss_fn(sae_out, x).sum(dim=-1).mean()
        aux_loss = sae_out.new_tensor(0.0)
        if k_aux:
            # sae-lens's auxiliary loss: the top dead latents reconstruct the live latents' residual.
            aux_scale = min(num_dead / (x.shape[-1] // 2), 1.0)
            aux_vals = aux_pre * norm[aux_idx] if norm is not None else aux_pre
            aux_w = aux_vals / norm[aux_idx] if norm is not None else aux_vals
            residual = (x - sae_out).detach()
            aux_recons = sparse_decode(aux_w, aux_idx, self.W_dec)
            aux_loss = (
                self.cfg.aux_loss_coefficient * aux_scale * (aux_recons - residual).pow(2).sum(-1).mean()
            )
        rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(idx.shape[1])
        coords = torch.stack([rows, idx.flatten()])
        size = (x.shape[0], self.cfg.d_sae)
        feature_acts = torch.sparse_coo_tensor(coords, acts.detach().flatten(), size, check_invariants=False)
        hidden_pre = torch.sparse_coo_tensor(coords, pre.detach().flatten(), size, check_invariants=False)
        return TrainStepOutput(
            sae_in=x,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=mse_loss + aux_loss,
            losses={"mse_loss": mse_loss, "auxiliary_reconstruction_loss": aux_loss},
        )
