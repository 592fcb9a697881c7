"""Edit the head's sparse concept support between the concept interface and the codebook.

`transformed_support(head, fn)` wraps `head.concepts.encode` for the duration of a `with` block, so that
`head.forward` sees `fn(support)` instead of the SAE's support — nothing in `segcompass.head` changes. A
precomputed `prefix_support` never passes through the concept interface: `HeadInputs.forward` applies the
same `fn` to it. The transforms here keep the autograd graph of the values they keep.

- `remove_atoms(support, removal)`: drop every entry of the given atoms (per sample, optionally only at
  some token positions) — the causal check.
- `scale_atoms(support, atoms, factor)`: multiply the values of some atoms — finite differences.
- `ValueTap`: replace the values by a fresh leaf that requires grad — activation × gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from segcompass.head.support import ConceptSupport

SupportFn = Callable[[ConceptSupport], ConceptSupport]
"""A support transform: ConceptSupport → ConceptSupport (same batch size)."""


@dataclass
class AtomRemoval:
    """Which support entries to remove, per sample of the batch."""

    atoms: Mapping[int, Sequence[int]]
    """Sample index → atoms to remove from that sample's support (samples not listed are left alone)."""
    tokens: Mapping[int, Sequence[int]] | None = None
    """Optional sample index → token positions to remove the atoms at (None: at every token)."""

    def __call__(self, support: ConceptSupport) -> ConceptSupport:
        return remove_atoms(support, self)


def _apply_mask(support: ConceptSupport, keep: Tensor) -> ConceptSupport:
    return ConceptSupport(
        support.batch_idx[keep],
        support.token_idx[keep],
        support.atom_idx[keep],
        support.values[keep],
        support.batch_size,
    )


def _sample_check(sample: int, batch_size: int) -> None:
    if not 0 <= int(sample) < batch_size:
        raise ValueError(f"sample index {sample} is out of range for a batch of {batch_size}")


def remove_atoms(support: ConceptSupport, removal: AtomRemoval) -> ConceptSupport:
    """`support` without the entries named by `removal` (values keep their graph; order is preserved)."""
    keep = torch.ones(support.num_entries, dtype=torch.bool, device=support.batch_idx.device)
    for sample, atoms in removal.atoms.items():
        _sample_check(sample, support.batch_size)
        atoms_t = torch.as_tensor(list(atoms), dtype=torch.long, device=keep.device)
        in_sample = support.batch_idx == int(sample)
        hit = in_sample & torch.isin(support.atom_idx, atoms_t)
        if removal.tokens is not None and int(sample) in removal.tokens:
            tok = torch.as_tensor(list(removal.tokens[int(sample)]), dtype=torch.long, device=keep.device)
            hit &= torch.isin(support.token_idx, tok)
        keep &= ~hit
    return _apply_mask(support, keep)


def check_atoms_in_support(support: ConceptSupport, sample: int, atoms: Sequence[int]) -> None:
    """Raise a ValueError naming the atoms of `atoms` that are not in sample `sample`'s support."""
    _sample_check(sample, support.batch_size)
    present = torch.unique(support.atom_idx[support.batch_idx == int(sample)]).cpu()
    if present.numel() == 0:
        raise ValueError(f"sample {sample} has an empty concept support: no atom can be removed")
    missing = [int(a) for a in atoms if not bool((present == int(a)).any())]
    if missing:
        raise ValueError(
            f"atom(s) {missing} are not in the support of sample {sample} ({present.numel()} atoms are)"
        )


def scale_atoms(
    support: ConceptSupport, atoms: Sequence[int], factor: float, sample: int | None = None
) -> ConceptSupport:
    """`support` with the values of `atoms` (in `sample`, or every sample) multiplied by `factor`."""
    atoms_t = torch.as_tensor(list(atoms), dtype=torch.long, device=support.atom_idx.device)
    hit = torch.isin(support.atom_idx, atoms_t)
    if sample is not None:
        _sample_check(sample, support.batch_size)
        hit &= support.batch_idx == int(sample)
    scale = torch.where(hit, torch.as_tensor(float(factor)), torch.as_tensor(1.0)).to(support.values)
    return ConceptSupport(
        support.batch_idx, support.token_idx, support.atom_idx, support.values * scale, support.batch_size
    )


class ValueTap:
    """A transform that gives the support fresh leaf values (requires_grad) and remembers them.

    After the forward, `taps` holds one leaf per call (the fresh support, then the prefix if any); the
    gradient of an objective w.r.t. `HeadOutput.support.values` is what activation × gradient needs.
    """

    def __init__(self) -> None:
        self.taps: list[Tensor] = []

    def __call__(self, support: ConceptSupport) -> ConceptSupport:
        leaf = support.values.detach().clone().requires_grad_(True)
        self.taps.append(leaf)
        return ConceptSupport(
            support.batch_idx, support.token_idx, support.atom_idx, leaf, support.batch_size
        )


@contextmanager
def transformed_support(head: nn.Module, fn: SupportFn | None) -> Iterator[None]:
    """Within the block, `head.concepts.encode` returns `fn(support)` (no-op when `fn` is None).

    The wrapper is an instance attribute of the concept interface, removed on exit (also on error); nested
    blocks compose, inner transform last.
    """
    if fn is None:
        yield
        return
    concepts = head.concepts
    shadowed = concepts.__dict__.get("encode")
    inner = concepts.encode

    def encode(hook_states: Tensor, token_mask: Tensor | None = None) -> ConceptSupport:
        support = inner(hook_states, token_mask)
        out = fn(support)
        if out.batch_size != support.batch_size:
            raise ValueError(
                f"a support transform changed the batch size ({support.batch_size} → {out.batch_size})"
            )
        return out

    concepts.encode = encode
    try:
        yield
    finally:
        if shadowed is None:
            del concepts.encode
        else:
            concepts.encode = shadowed
