"""Slot provenance on a hand-built provenance record with known answers (analysis/provenance.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.provenance import (
    TokenInfo,
    entry_table,
    heatmap_to_pixels,
    patch_grid,
    pixel_map,
    provenance_figure,
    slot_atoms,
    token_contributions,
)
from sae.image_geometry import ImageGeometry
from sae.token_types import TokenType
from segcompass.head.outputs import SampleProvenance

GEOM = ImageGeometry((16, 16), (16, 16), (0, 0), (2, 2), 8)


def _record() -> tuple[SampleProvenance, TokenInfo]:
    """Tokens 0-3: the 2×2 image patches; 4, 5: text. Support: (0, atom 7, 2), (0, atom 3, 1), (4, atom 7, 1),
    (5, atom 9, −3). Slot 0 attends 0.5 / 0.25 / 0.25 to tokens 0 / 4 / 5; slot 1 only to token 5."""
    prov = SampleProvenance(
        token_idx=torch.tensor([0, 0, 4, 5]),
        atom_idx=torch.tensor([7, 3, 7, 9]),
        values=torch.tensor([2.0, 1.0, 1.0, -3.0]),
        concept_tokens=torch.tensor([0, 4, 5]),
        entry_concept=torch.tensor([0, 0, 1, 2]),
        slot_attention=torch.tensor([[[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]]),
    )
    types = np.array([TokenType.IMAGE] * 4 + [TokenType.INSTRUCTION, TokenType.COT])
    rc = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [-1, -1], [-1, -1]])
    return prov, TokenInfo(types, rc, GEOM, ["<i>"] * 4 + ["red", "circle"])


def test_atoms_tokens_patches_and_pixels_by_hand() -> None:
    prov, tokens = _record()
    atoms = slot_atoms(prov)
    s0 = atoms[atoms.slot == 0].set_index("atom")
    # atom 7: 0.5·2 + 0.25·1 = 1.25; atom 9: 0.25·3 = 0.75; atom 3: 0.5·1 = 0.5 (total 2.5)
    assert list(s0.index) == [7, 9, 3]
    assert s0["score"].tolist() == pytest.approx([1.25, 0.75, 0.5])
    assert s0["share"].tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert s0.loc[7, "tokens"] == 2
    ref_atoms, ref_scores = prov.atom_scores(0)  # the head's own ranking agrees
    assert ref_atoms.tolist() == [7, 9, 3] and ref_scores.tolist() == pytest.approx([1.25, 0.75, 0.5])
    s1 = atoms[atoms.slot == 1]
    assert s1["atom"].iloc[0] == 9 and s1["score"].iloc[0] == pytest.approx(3.0)
    per_token = token_contributions(prov, 0, tokens).set_index("token")
    assert per_token.loc[0, "contribution"] == pytest.approx(1.5)
    assert per_token.loc[5, "text"] == "circle" and per_token.loc[5, "token_type"] == "cot"
    grid = patch_grid(prov, 0, tokens)
    assert grid.tolist() == [[1.5, 0.0], [0.0, 0.0]]
    pixels = pixel_map(grid, GEOM)
    assert pixels.shape == (16, 16) and pixels[:8, :8].min() == 1.5 and pixels[8:, :].max() == 0
    entries = entry_table(prov, tokens)
    img = entries[(entries.slot == 0) & (entries.token == 0)]
    assert img[["x0", "y0", "x1", "y1"]].iloc[0].tolist() == [0, 0, 8, 8]
    assert entries[entries.token == 4]["x0"].isna().all()


def test_heatmap_letterbox_to_pixels_and_figure() -> None:
    prov, tokens = _record()
    wide = ImageGeometry((8, 16), (8, 16), (0, 0), (1, 2), 8)
    hm = torch.zeros(32, 32)
    hm[:16, :16] = 5.0  # left half of the 32×16 letterboxed image
    px = heatmap_to_pixels(hm, wide.original_size)
    assert (
        px.shape == (8, 16)
        and px[:, :7].min() == pytest.approx(5.0)
        and px[:, 9:].max() == pytest.approx(0.0)
    )
    fig = provenance_figure(
        prov, 0, tokens, image=np.zeros((16, 16, 3), np.uint8), heatmap=torch.zeros(32, 32)
    )
    kinds = [t.type for t in fig.data]
    assert kinds.count("bar") == 2 and "image" in kinds and kinds.count("heatmap") == 2
