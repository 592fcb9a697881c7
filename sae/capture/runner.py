"""`segcompass-sae capture`: run a backbone over image–text documents and write an activation store."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sae.backbone_protocol import CaptureBackbone, resolve_backbone
from sae.files import lock_output
from sae.identity import weights_fingerprint
from sae.store import CapturedDocument, StoreMetadata, StoreWriter, finalize_store
from sae.token_types import TokenType

from .backends import make_backend
from .sources import DocumentSource, SourceDocument, SourceError, open_source

logger = logging.getLogger(__name__)


@dataclass
class CaptureConfig:
    """Capture hook-layer activations of a backbone over an image–text data set into an activation store."""

    data: str = ""
    """Image–text data: a folder with corpus.jsonl / *.jsonl / *.parquet records, a saved `datasets` folder,
    or an image folder with metadata.jsonl (see sae/capture/sources.py)."""
    out: str = "runs/activations"
    """Store folder. It must not hold a finished store; a partial one needs --resume."""
    backbone: str = "tiny:qwen2_5_vl"
    """`tiny:<family>`, a local checkpoint folder, or a hub id."""
    layer: int | None = None
    """Hook layer as an HF hidden_states index (0 = embeddings, L = output of block L-1); default: the
    backbone's (13 for Qwen2.5-VL-7B, 16 for LLaVA-1.5)."""
    dtype: str = "float32"
    """Storage dtype of the activations: float32, bfloat16 or float16."""
    batch_size: int = 8
    """Documents per forward pass."""
    shard_tokens: int = 65536
    """Rows per shard (a shard holds whole documents, so it can be slightly larger)."""
    max_tokens: int | None = None
    """Stop once this many tokens are stored (over all ranks)."""
    max_documents: int | None = None
    """Use only the first N documents of the data."""
    resume: bool = False
    """Continue an interrupted capture in --out (finished shards are kept, no document twice)."""
    backend: str = "nnsight"
    """How states are read: nnsight (early stop after the hook layer) or transformer_lens
    (blocks.{L-1}.hook_resid_post)."""
    early_stop: bool = True
    """Stop the forward after the hook layer (nnsight) — later layers are not needed to capture."""
    generate_tokens: int = 0
    """Also generate this many tokens per document (greedy, one pass) and store their states; tokens are
    labelled CoT / concentration / response from the <think> and <REF_POS> ids."""
    image_first: bool = True
    """Image before the text in the prompt; False puts the instruction first (image tokens then see it)."""
    skip_bad: bool = False
    """Skip documents whose image cannot be decoded, whose text is empty or whose record (corpus line) is
    malformed, instead of stopping; each skip is counted, logged and listed in the store's manifest."""
    image_column: str = "image"
    """Column with the image (path relative to the records file, or a datasets Image)."""
    text_column: str = "text"
    """Column with the text placed in the prompt."""
    seed: int = 0
    """Seed of a tiny backbone's random weights (and of a warm-up preset); recorded with the store."""


@dataclass
class CaptureResult:
    """What a capture wrote."""

    out: Path
    """The store folder."""
    num_tokens: int
    """Rows this rank stored in this run (resumed shards excluded)."""
    skipped: list[str]
    """Documents skipped with --skip-bad in this run, with the reason (all runs' skips: the manifest's
    `skipped_documents`)."""


def run_capture(
    cfg: CaptureConfig, backbone: CaptureBackbone | None = None, source: DocumentSource | None = None
) -> CaptureResult:
    """Capture into `cfg.out`; under torchrun each rank takes every world_size-th document. The folder is
    locked for the run (another run into it is refused), which also checks that it can be written."""
    rank, world = _init_distributed()
    with lock_output(cfg.out, "activation capture"):
        return _capture(cfg, backbone, source, rank, world)


def store_metadata(cfg: CaptureConfig, backbone: CaptureBackbone, source: DocumentSource) -> StoreMetadata:
    """Everything that decides the store's content (its id, and what a resume must match)."""
    return StoreMetadata(
        backbone=backbone.name_or_path,
        family=getattr(getattr(backbone, "family", None), "name", type(backbone.model).__name__),
        hook_layer=backbone.hook_layer,
        d_in=backbone.hidden_size,
        dtype=cfg.dtype,
        revision=getattr(backbone.model.config, "_commit_hash", None),
        data={
            **source.fingerprint(),
            "max_documents": cfg.max_documents,
            "max_tokens": cfg.max_tokens,
            "image_column": cfg.image_column,
            "text_column": cfg.text_column,
        },
        prompt={"image_first": cfg.image_first, "generate_tokens": cfg.generate_tokens},
        weights={"seed": cfg.seed, "fingerprint": weights_fingerprint(backbone.model)},
        backend=cfg.backend,
    )


def _capture(
    cfg: CaptureConfig,
    backbone: CaptureBackbone | None,
    source: DocumentSource | None,
    rank: int,
    world: int,
) -> CaptureResult:
    if source is None:
        if not cfg.data:
            raise ValueError("no --data given")
        source = open_source(cfg.data, image_column=cfg.image_column, text_column=cfg.text_column)
    bad = getattr(source, "bad_records", {})
    if bad and not cfg.skip_bad:
        first = [bad[i] for i in sorted(bad)[:3]]
        raise SourceError(
            f"{len(bad)} malformed record(s) in {cfg.data}: {'; '.join(first)}; fix them, or pass --skip-bad "
            "to leave them out (they are listed in the store's manifest)"
        )
    backbone = backbone or resolve_backbone(cfg.backbone, hook_layer=cfg.layer, seed=cfg.seed)
    if cfg.layer is not None and cfg.layer != backbone.hook_layer:
        raise ValueError(f"backbone hook layer {backbone.hook_layer} differs from --layer {cfg.layer}")
    metadata = store_metadata(cfg, backbone, source)
    writer = StoreWriter(cfg.out, metadata, rank=rank, shard_tokens=cfg.shard_tokens, resume=cfg.resume)
    capture_backend = make_backend(
        cfg.backend, backbone, early_stop=cfg.early_stop and not cfg.generate_tokens
    )
    n_docs = min(len(source), cfg.max_documents or len(source))
    mine = list(range(rank, n_docs, world))
    budget = None if cfg.max_tokens is None else -(-cfg.max_tokens // world)
    stored_before = sum(s.num_tokens for s in writer.shards)
    stored, skipped = 0, []
    progress = tqdm(total=budget, initial=stored_before, unit="tok", unit_scale=True, desc=f"capture r{rank}")
    try:
        # Batches are formed over all of this rank's documents, and a batch that a resumed run finds
        # partly stored is run whole again (its stored documents are not added twice): every document
        # is captured beside the same others, with the same padding, so a resume is bit-identical.
        for start in range(0, len(mine), cfg.batch_size):
            batch = mine[start : start + cfg.batch_size]
            if all(i in writer.done_documents for i in batch):
                continue
            if budget is not None and stored_before + stored >= budget:
                break
            docs = _load(source, batch, cfg.skip_bad, skipped, writer)
            for doc in _capture_batch(capture_backend, backbone, docs, cfg):
                if doc.doc_id in writer.done_documents:
                    continue
                if budget is not None and stored_before + stored >= budget:
                    break
                writer.add(doc)
                stored += doc.activations.shape[0]
                progress.update(doc.activations.shape[0])
    finally:
        writer.close()  # keep every finished document, also on an error or Ctrl-C
        progress.close()
    if skipped:
        logger.warning("skipped %d documents: %s", len(skipped), "; ".join(skipped[:5]))
    if world > 1:
        dist.barrier()
    if rank == 0:
        finalize_store(cfg.out, metadata, num_ranks=world)
    if world > 1:
        dist.barrier()
    return CaptureResult(Path(cfg.out), stored, skipped)


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _load(
    source: DocumentSource, indices: list[int], skip_bad: bool, skipped: list[str], writer: StoreWriter
) -> list[SourceDocument]:
    docs = []
    for i in indices:
        try:
            docs.append(source[i])
        except SourceError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            writer.skip(i, str(err))
    return docs


def _capture_batch(backend, backbone: CaptureBackbone, docs: list[SourceDocument], cfg: CaptureConfig):
    if not docs:
        return
    prepared = backbone.prepare([d.image for d in docs], [d.text for d in docs], image_first=cfg.image_first)
    token_types, image_rc = prepared.token_types, prepared.image_rc
    ids = prepared.inputs["input_ids"]
    if cfg.generate_tokens:
        generated = backend.generate(prepared, cfg.generate_tokens)
        states, new_ids = generated.states, generated.sequences[:, ids.shape[1] :]
        token_types = torch.cat([token_types, label_generated(new_ids, backbone)], dim=1)
        image_rc = torch.cat([image_rc, torch.full((*new_ids.shape, 2), -1, dtype=image_rc.dtype)], dim=1)
        ids = generated.sequences
    else:
        states = backend.prompt_states(prepared)  # [B, T, D]
    for b, doc in enumerate(docs):
        keep = token_types[b] != TokenType.PAD
        yield CapturedDocument(
            doc_id=doc.doc_id,
            source_id=doc.source_id,
            text=doc.text,
            activations=states[b, keep].detach().cpu(),
            token_ids=ids[b, keep].to(torch.int32),
            token_types=token_types[b, keep],
            image_rc=image_rc[b, keep],
            geometry=prepared.geometries[b],
        )


def label_generated(new_ids: torch.Tensor, backbone: CaptureBackbone) -> torch.Tensor:
    """TokenType of generated ids [B, N]: inside <think>…</think> → COT, <REF_POS> → CONCENTRATION,
    the think markers and other special tokens → SPECIAL, other text → RESPONSE; from the first
    end-of-sequence token on → PAD (not stored)."""
    tok = backbone.processor.tokenizer
    think_open, think_close, ref_pos = (
        tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<REF_POS>")
    )
    eos = {
        i
        for i in (
            tok.eos_token_id,
            tok.pad_token_id,
            getattr(backbone.model.generation_config, "eos_token_id", None),
        )
        if isinstance(i, int)
    }
    special = set(tok.all_special_ids)
    out = torch.full(new_ids.shape, int(TokenType.PAD), dtype=torch.long)
    for b, row in enumerate(new_ids.tolist()):
        inside = False
        for t, token in enumerate(row):
            if token in eos:
                break
            if token == think_open:
                inside, kind = True, TokenType.SPECIAL
            elif token == think_close:
                inside, kind = False, TokenType.SPECIAL
            elif token == ref_pos:
                kind = TokenType.CONCENTRATION
            elif token in special:
                kind = TokenType.SPECIAL
            else:
                kind = TokenType.COT if inside else TokenType.RESPONSE
            out[b, t] = kind
    return out
