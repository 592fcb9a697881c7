"""FSDP2 sharding for multi-GPU runs (`JointTrainConfig.parallel = "fsdp"`, launched with torchrun).

What gets sharded across the processes: every decoder block of the LLM, the LLM itself (embeddings,
vision tower, lm_head), the head's trainable parts, and the frozen KL reference when it is a copy (with
LoRA it is the policy itself, adapters off). The frozen SAE and SAM image encoder stay whole on every
process (they are read outside the head's forward: image embeddings, analyses). Generation runs with
`synced_gpus`, so every process calls the sharded forward the same number of times.

Checkpoints and the final model are gathered into whole tensors (`DTensor.full_tensor`, parameter by
parameter in the same order on every process), so a sharded run writes the same files as a single-process
one; a resume scatters them back (`distribute_tensor`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from segcompass.model import SegCompassModel


def _blocks_of(module: nn.Module, template: nn.Module, blocks: nn.ModuleList) -> nn.ModuleList:
    """The ModuleList in `module` at the path `blocks` has in `template` (for the deep-copied reference)."""
    name = next(n for n, m in template.named_modules() if m is blocks)
    return module.get_submodule(name)


def shard_model(model: SegCompassModel, reference: nn.Module | None = None) -> None:
    """Apply FSDP2 in place: decoder blocks, then the LLM; the head's trainable parameters; the reference copy.

    Call after `setup_trainable` has set what trains (frozen head parts are left whole) and before the
    optimizer is built (sharding replaces the parameter objects)."""
    if model.head.codebook.sparse_grad:
        raise ValueError("FSDP needs dense codebook gradients: set HeadConfig.codebook_sparse_grad=False")
    blocks = model.backbone.decoder_layers
    if reference is not None and any(True for _ in reference.parameters()):
        _shard_llm(reference, _blocks_of(reference, model.llm, blocks))
    _shard_llm(model.llm, blocks)
    frozen = {p for p in model.head.parameters() if not p.requires_grad}
    fully_shard(model.head, ignored_params=frozen)


def _shard_llm(llm: nn.Module, blocks: nn.ModuleList) -> None:
    """Decoder blocks; the towers beside the language model (vision tower, projector: `generate` calls
    them outside the model's forward, so each needs its own unit); then the whole LLM."""
    for block in blocks:
        fully_shard(block)
    inner = getattr(llm, "model", None)
    if isinstance(inner, nn.Module):
        for child in inner.children():
            holds_blocks = any(m is blocks for m in child.modules())
            if not holds_blocks and any(True for _ in child.parameters()):
                fully_shard(child)
    fully_shard(llm)
    # FSDP2 picks its root at the first forward; make it the LLM before `generate` calls a tower directly.
    device = next(llm.parameters()).device
    with torch.no_grad():
        llm(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    reshard_all(llm)  # a no-grad forward leaves the root unsharded; the optimizer must see the shards


def reshard_all(module: nn.Module) -> None:
    """Put every FSDP unit in `module` back to its sharded parameters (FSDP2 swaps the module's parameter
    objects while a unit is unsharded; named_parameters() must give the shards the optimizer holds)."""
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_grad_norm(norm: torch.Tensor) -> torch.Tensor:
    """`clip_grad_norm_`'s result as a plain tensor (it is a DTensor over sharded parameters)."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def whole_on_cpu(t: torch.Tensor) -> torch.Tensor:
    """A whole CPU tensor of `t` (collective for a DTensor: every process must call it in the same order);
    a tensor already whole on the CPU is returned as it is, not copied."""
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu().contiguous()


def gather_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Whole trainable weights {name: tensor} and optimizer state {"state": {name: {...}}, "param_groups":
    [...]} on CPU (collective: every process calls it and receives the same)."""
    reshard_all(model)
    names = {id(p): n for n, p in model.named_parameters()}
    weights = {n: whole_on_cpu(p) for n, p in model.named_parameters() if p.requires_grad}
    state: dict[str, dict[str, Any]] = {}
    lost = [
        (g.get("name"), tuple(p.shape))
        for g in optimizer.param_groups
        for p in g["params"]
        if id(p) not in names
    ]
    if lost:
        raise RuntimeError(f"optimizer parameters that are no longer the model's: {lost[:8]}")
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = optimizer.state.get(p, {})
            state[names[id(p)]] = {
                k: whole_on_cpu(v) if isinstance(v, torch.Tensor) else v for k, v in sorted(entry.items())
            }
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return weights, {"state": state, "param_groups": groups}


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole state dict of `model` on CPU (collective)."""
    reshard_all(model)
    return {k: whole_on_cpu(v) for k, v in model.state_dict().items()}


def laid_out_like(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `p` (this process's shard when `p` is a DTensor)."""
    full = full.to(device=p.device, dtype=p.dtype if full.is_floating_point() else full.dtype)
    return distribute_tensor(full, p.device_mesh, p.placements) if isinstance(p, DTensor) else full


def load_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Any], optim_state: dict[str, Any]
) -> None:
    """Load whole trainable weights and optimizer state (as `gather_training_state` wrote them) into the
    sharded model on every process."""
    reshard_all(model)
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, "
                         f"unknown {sorted(set(weights) - set(params))[:5]}")  # fmt: skip
    with torch.no_grad():
        for name, value in weights.items():
            p = params[name]
            p.copy_(laid_out_like(value, p))
    for group, saved in zip(optimizer.param_groups, optim_state["param_groups"], strict=True):
        group.update(saved)
    for name, entry in optim_state["state"].items():
        p = params[name]
        if entry:
            optimizer.state[p] = {
                k: (v.clone() if k == "step" else laid_out_like(v, p)) if isinstance(v, torch.Tensor) else v
                for k, v in entry.items()
            }
