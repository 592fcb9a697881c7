"""Constructed inputs with known answers for the analysis tests: stores, geometries, masks, tiny SAEs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sae.image_geometry import ImageGeometry
from sae.store import CapturedDocument, StoreMetadata, StoreWriter, finalize_store
from sae.token_types import TokenType
from segcompass.world.masks import encode_rle

D_IN = 8
GRID = (4, 4)
CELL = 16
SIZE = (64, 64)
GEOMETRY = ImageGeometry(SIZE, SIZE, (0, 0), GRID, CELL)
N_TEXT = {TokenType.SPECIAL: 2, TokenType.INSTRUCTION: 3, TokenType.COT: 4, TokenType.CONCENTRATION: 1}
"""Text tokens of every constructed document, by type (besides its 16 image tokens)."""


def cell_mask(cells: list[tuple[int, int]]) -> np.ndarray:
    """Bool mask covering exactly the given token cells of the 4×4 grid."""
    m = np.zeros(SIZE, dtype=bool)
    for r, c in cells:
        m[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = True
    return m


TARGET_CELLS = [(1, 1), (1, 2), (2, 1), (2, 2)]
"""The referred instance: 4 of 16 tokens (25 %)."""
DISTRACTOR_CELLS = [(0, 3)]
"""A distractor: 1 token."""


def instances_for(doc: int) -> list[dict]:
    """Corpus-style instances of constructed document `doc` (same layout in every document)."""
    rows = []
    for i, (cells, target, size) in enumerate(
        [(TARGET_CELLS, True, "large"), (DISTRACTOR_CELLS, False, "small")]
    ):
        m = cell_mask(cells)
        rows.append(
            {"id": i, "shape": "square", "colour": "red", "size_name": size, "rle": encode_rle(m),
             "area": int(m.sum()), "target": target}
        )  # fmt: skip
    return rows


def write_corpus(path: Path, n_docs: int) -> Path:
    """A corpus.jsonl whose record ids are the constructed documents' source ids."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"id": f"doc-{d}", "text": "t", "instances": instances_for(d)}) for d in range(n_docs)
    ]
    (path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return path


def object_activations(on_target: np.ndarray, on_distractor: np.ndarray, n_text: int) -> torch.Tensor:
    """One-hot states: dimension 0 on referred-instance tokens, 4 on distractor tokens, 1 on background
    tokens, 2 on text tokens."""
    n_img = len(on_target)
    x = torch.zeros(n_img + n_text, D_IN)
    img = x[:n_img]
    img[torch.from_numpy(on_target), 0] = 1.0
    img[torch.from_numpy(on_distractor), 4] = 1.0
    img[torch.from_numpy(~(on_target | on_distractor)), 1] = 1.0
    x[n_img:, 2] = 1.0
    return x


def make_store(
    path: Path,
    n_docs: int,
    *,
    random_acts: bool = False,
    geometry: bool = True,
    shard_tokens: int = 64,
    backbone: str = "tiny:test",
    hook_layer: int = 2,
    seed: int = 0,
    data: dict | None = None,
):
    """A finished store of `n_docs` documents: 16 image tokens (row-major) then the text tokens of N_TEXT."""
    from sae.store import ActivationStore

    meta = StoreMetadata(
        backbone=backbone, family="test", hook_layer=hook_layer, d_in=D_IN, dtype="float32", data=data or {}
    )
    writer = StoreWriter(path, meta, shard_tokens=shard_tokens)
    g = torch.Generator().manual_seed(seed)
    rr, cc = np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1]), indexing="ij")
    rc = np.stack([rr.ravel(), cc.ravel()], 1)
    on_target = np.array([(int(r), int(c)) in TARGET_CELLS for r, c in rc])
    on_distractor = np.array([(int(r), int(c)) in DISTRACTOR_CELLS for r, c in rc])
    text_types = [t for t, n in N_TEXT.items() for _ in range(n)]
    for d in range(n_docs):
        n = len(rc) + len(text_types)
        x = (
            torch.randn(n, D_IN, generator=g)
            if random_acts
            else object_activations(on_target, on_distractor, len(text_types))
        )
        types = torch.tensor([TokenType.IMAGE] * len(rc) + [int(t) for t in text_types], dtype=torch.int8)
        image_rc = torch.full((n, 2), -1, dtype=torch.int16)
        image_rc[: len(rc)] = torch.from_numpy(rc).to(torch.int16)
        writer.add(
            CapturedDocument(
                doc_id=d, source_id=f"doc-{d}", text="t", activations=x,
                token_ids=torch.zeros(n, dtype=torch.int32), token_types=types, image_rc=image_rc,
                geometry=GEOMETRY if geometry else None,
            )
        )  # fmt: skip
    writer.close()
    finalize_store(path, meta)
    return ActivationStore.open(path)


def exact_sae(d_sae: int = 6):
    """A StandardSAE whose atom 0 fires (value 1) exactly on referred-instance tokens, atom 4 on distractor
    tokens, atoms 2 (value 1) and 3 (value 2) on text tokens, and no atom on background tokens."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=d_sae, apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.W_enc[0, 0] = 1.0
        sae.W_enc[2, 2] = 1.0
        sae.W_enc[2, 3] = 2.0
        sae.W_enc[4, 4] = 1.0
        sae.W_dec[0, 0] = 1.0
    return sae


def random_sae(d_sae: int = 32, seed: int = 0):
    """A StandardSAE with random Gaussian weights (no relation to the objects)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=d_sae, apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.zero_()
    return sae


def save_sae(sae, path: Path, **metadata) -> Path:
    """Save `sae` in sae-lens's format, with a `segcompass_sae.json` holding `metadata` when given."""
    sae.save_model(str(path))
    if metadata:
        (path / "segcompass_sae.json").write_text(json.dumps({"format": "segcompass-sae/1", **metadata}))
    return path
