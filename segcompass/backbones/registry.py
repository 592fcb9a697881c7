"""Find a family by name or checkpoint, load a real backbone, or build a tiny one.

Families are registered under the entry-point group `segcompass.backbones` (see pyproject.toml), so a
third-party package can add one without touching this code, and `sae` can list them without importing
`segcompass`.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import entry_points
from pathlib import Path

import torch

from .added_tokens import add_tokens_mean_initialised
from .backbone import METADATA_FILE, Backbone
from .family import BackboneFamily, TinySpec
from .tokenizer import REASONING_TOKENS

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "segcompass.backbones"
_ALIASES = {
    "qwen2.5-vl": "qwen2_5_vl",
    "qwen2_5-vl": "qwen2_5_vl",
    "qwen": "qwen2_5_vl",
    "llava-1.5": "llava",
}


def _registered():
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_families() -> list[str]:
    """Names of every registered backbone family."""
    return sorted(_registered())


def get_family(name: str) -> BackboneFamily:
    """The family called `name` (or an alias such as `qwen2.5-vl`); unknown names list the known ones."""
    key = _ALIASES.get(name.lower(), name.lower())
    refs = _registered()
    if key not in refs:
        raise ValueError(f"unknown backbone family {name!r}; known families: {', '.join(sorted(refs))}")
    return refs[key].load()()


def family_for_model_type(model_type: str) -> BackboneFamily:
    """The family whose models have `config.model_type == model_type`."""
    for name in list_families():
        family = get_family(name)
        if model_type in family.model_types:
            return family
    known = {n: get_family(n).model_types for n in list_families()}
    raise ValueError(f"no backbone family handles model_type {model_type!r}; known: {known}")


def build_tiny(family: str = "qwen2_5_vl", *, seed: int = 0, spec: TinySpec | None = None) -> Backbone:
    """A tiny random-weight backbone of a family, built offline (deterministic for a seed)."""
    fam = get_family(family)
    spec = spec or TinySpec()
    model, processor = fam.build_tiny(spec, seed)
    return Backbone(model, processor, fam, spec.hook_layer, f"tiny:{fam.name}")


def load_backbone(
    name_or_path: str | os.PathLike,
    *,
    family: str | None = None,
    hook_layer: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    add_reasoning_tokens: bool = True,
) -> Backbone:
    """Load a checkpoint from a local folder or a hub id — the same path for real and saved tiny models.

    Args:
        name_or_path: a folder written by `save_pretrained`/`Backbone.save`, or a hub id.
        family: family name; inferred from `config.json`'s model_type when omitted.
        hook_layer: HF `hidden_states` index; defaults to the folder's `segcompass.json`, else the paper's
            layer for a known checkpoint, else the middle of the stack.
        dtype, device, attn_implementation: passed to `from_pretrained`.
        add_reasoning_tokens: add `<think>`, `</think>`, `<REF_POS>` to the tokenizer if missing, growing
            the embeddings only if the matrix has no spare rows; every added row of the input and output
            embeddings starts at the mean of the existing tokens' rows (`added_tokens`).

    The tokenizer pads on the left whatever its saved config says (`Backbone` sets it for every family).
    """
    name = str(name_or_path)
    local = Path(name)
    meta: dict = {}
    if local.is_dir():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"{local} has no config.json; is it a save_pretrained folder?")
        model_type = json.loads((local / "config.json").read_text()).get("model_type", "")
        if (local / METADATA_FILE).exists():
            meta = json.loads((local / METADATA_FILE).read_text())
    elif family is None:
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(name).model_type
    fam = (
        get_family(family or meta.get("family"))
        if (family or meta.get("family"))
        else family_for_model_type(model_type)
    )

    model = fam.model_class().from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation)
    model = model.to(device).eval()
    processor = fam.load_processor(name)
    if add_reasoning_tokens:
        _ensure_reasoning_tokens(model, processor)
    num_layers = len(fam.decoder_layers(model))
    layer = (
        hook_layer
        if hook_layer is not None
        else meta.get("hook_layer", fam.default_hook_layer(name, num_layers))
    )
    logger.info("loaded %s (%s, %d layers, hook layer %d)", name, fam.name, num_layers, layer)
    return Backbone(model, processor, fam, layer, name)


def _ensure_reasoning_tokens(model, processor) -> None:
    add_tokens_mean_initialised(model, processor.tokenizer, REASONING_TOKENS)


def resolve_backbone(spec: str, *, seed: int = 0, hook_layer: int | None = None, **load_kwargs) -> Backbone:
    """`tiny:<family>` builds a tiny random-weight preset (with `seed`); `warm:<family>` loads the preset
    warmed up on the synthetic world, a cached stage that loading never trains (`warm.py`: `StageMissing`
    names `segcompass warmup`, which builds it); `stack:<family>` loads the default staged tiny VLM and
    `stack-init:<family>` its architecture at random init (`stacked.py`; committed with the code, built by
    `segcompass pretrain`); anything else is a folder or a hub id for `load_backbone`."""
    from .stacked import is_stack_spec, load_stack  # lazy: it loads through this module

    if spec.startswith("warm:"):
        from .warm import load_warm  # lazy: the warm-up's config pulls in the world's

        return load_warm(spec, seed=seed, hook_layer=hook_layer, **load_kwargs)
    if is_stack_spec(spec):
        return load_stack(spec, seed=seed, hook_layer=hook_layer, **load_kwargs)
    if spec.startswith("tiny:"):
        tiny = TinySpec() if hook_layer is None else TinySpec(hook_layer=hook_layer)
        return build_tiny(spec.removeprefix("tiny:"), seed=seed, spec=tiny)
    return load_backbone(spec, hook_layer=hook_layer, **load_kwargs)


def emits_slots(spec: str) -> bool:
    """Whether `spec` names a backbone this project taught to emit K `<REF_POS>` (`warm:`, `stack:`):
    `resolve_backbone` then takes the policy's K as `num_slots` (and checks it, or picks that warm-up)."""
    return spec.startswith(("warm:", "stack:"))


def backbone_identity(spec: str, *, seed: int = 0) -> str:
    """What `resolve_backbone(spec, seed=seed)` would load, named without loading or building anything:
    `warm:<family>` → its warm-up's stage key (which changes with the warm-up's config and version);
    `stack:<family>` → its last stage's key; `stack-init:<family>` → that key and the seed;
    `tiny:<family>` → the spec and seed (the weights are a pure function of the code and the seed);
    anything else → the spec itself. Records made from a backbone (e.g. the notebooks' stored outputs)
    keep it so that a new default is noticed."""
    if spec.startswith("warm:"):
        from .warm import WARMUP_STAGE, warm_config  # lazy, as in `resolve_backbone`

        return WARMUP_STAGE.key(warm_config(spec, seed=seed))
    from .stacked import is_stack_spec, stack_identity  # lazy, as in `resolve_backbone`

    if is_stack_spec(spec):
        return stack_identity(spec, seed=seed)
    if spec.startswith("tiny:"):
        return f"{spec}@seed{seed}"
    return spec
