"""The identity of a model's weights: a short hash that differs when the weights differ.

A store, an SAE run or a joint training run records the identity of the weights it was made from, so a
resume or a reuse with other weights (another seed of a random-init preset, another checkpoint behind the
same folder name) is refused instead of silently mixing two models. The hash covers every parameter and
buffer's name, shape and dtype and, per tensor, up to `SAMPLE` evenly spaced values (all values of a
tensor that small: every tiny preset is hashed exactly), so it costs milliseconds even at 7B.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import torch
from torch import nn

SAMPLE = 1 << 16
"""Values hashed per tensor (evenly spaced over the flattened tensor)."""


def tensor_digest(h: hashlib._Hash, name: str, t: torch.Tensor) -> None:
    """Feed one tensor (name, shape, dtype, sampled values) into `h`."""
    t = t.detach()
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    flat = t.reshape(-1)
    if flat.numel() > SAMPLE:
        index = torch.linspace(0, flat.numel() - 1, SAMPLE, device=flat.device).round().long()
        flat = flat[index]
    values = flat.cpu()
    if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
        values = values.float()  # bf16 / fp16 are exact in fp32; numpy has no bf16
    h.update(values.contiguous().numpy().tobytes())


def _named_tensors(module: nn.Module):
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 (16 hex) of `module`'s parameters and buffers (see the module docstring)."""
    h = hashlib.sha256()
    for name, t in sorted(_named_tensors(module), key=lambda nt: nt[0]):
        tensor_digest(h, name, t)
    return h.hexdigest()[:16]


def part_fingerprints(module: nn.Module, depth: int = 2) -> dict[str, str]:
    """One fingerprint per part of `module`, a part being the first `depth` components of the tensor names
    ("llm.model", "head.concepts", ...), so a mismatch names the part that differs."""
    parts: dict[str, list[tuple[str, torch.Tensor]]] = defaultdict(list)
    for name, t in _named_tensors(module):
        parts[".".join(name.split(".")[:depth])].append((name, t))
    out = {}
    for part, tensors in sorted(parts.items()):
        h = hashlib.sha256()
        for name, t in sorted(tensors, key=lambda nt: nt[0]):
            tensor_digest(h, name, t)
        out[part] = h.hexdigest()[:16]
    return out
