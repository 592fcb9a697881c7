"""`stack:<family>`: the default staged tiny VLM (`segcompass pretrain`), its instruction-tuned last stage
loaded like a released checkpoint; `stack-init:<family>`: the same architecture and image processor at
random init, the control every figure of the stack is read beside.

The spec names a release, as a hub id does: `STACK_RELEASES` pins the key of the default `StackConfig`'s last
stage (`segcompass.pretrain`; a test keeps the two equal). Loading never trains: the folder is taken from the
cache, else copied from the repository's committed checkpoints, else `StageMissing` names `segcompass
pretrain`. Changing the stack's defaults means building and committing its stages and moving the pin.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from segcompass.committed import STAGE_FILE, install_committed
from segcompass.stages import StageMissing, is_built, resolve_root

from .backbone import METADATA_FILE, Backbone
from .family import TinySpec
from .registry import build_tiny, get_family, load_backbone

STACK_PREFIX = "stack:"
CONTROL_PREFIX = "stack-init:"
STACK_SUBDIR = "stages"
"""Where the stack's stages live under the cache root (`segcompass.stages.Stage.subdir`)."""
STACK_COMMAND = "segcompass pretrain"

DEFAULT_BACKBONE = "stack:qwen2_5_vl"
"""The default backbone of the pipeline, `segcompass train`, `segcompass ablation` and the notebooks."""
DEFAULT_CONTROL = "stack-init:qwen2_5_vl"
"""Its random-init control."""

STACK_RELEASES: dict[str, str] = {"qwen2_5_vl": "vlm-instruct-14386fb71942e89b"}
"""Family → the stage key of the default stack's last stage (`INSTRUCT.key(StackConfig().instruct_stage())`)."""


def is_stack_spec(spec: str) -> bool:
    """Whether `spec` names the default stack or its random-init control."""
    return spec.startswith((STACK_PREFIX, CONTROL_PREFIX))


def stack_key(spec: str) -> str:
    """The stage key a `stack:` / `stack-init:` spec names (`stack:` alone: Qwen2.5-VL)."""
    family = spec.removeprefix(CONTROL_PREFIX).removeprefix(STACK_PREFIX) or "qwen2_5_vl"
    family = get_family(family).name
    if family not in STACK_RELEASES:
        raise ValueError(
            f"no default stack for {family!r}: `segcompass pretrain` builds the stack for "
            f"{', '.join(sorted(STACK_RELEASES))} (its dialogues use that family's chat format)"
        )
    return STACK_RELEASES[family]


def stack_folder(spec: str, cache_root: str | os.PathLike | None = None) -> Path:
    """The built folder of the stack `spec` names: cached, else copied from the committed checkpoints;
    `StageMissing` naming `segcompass pretrain` otherwise. Never trains."""
    key = stack_key(spec)
    path = resolve_root(cache_root) / STACK_SUBDIR / key
    if not is_built(path) and not install_committed(STACK_SUBDIR, path):
        raise StageMissing(
            f"the default stack ({key}) is neither built nor committed ({path}); build it with "
            f"`{STACK_COMMAND}` (about 9 core-hours on a CPU)"
        )
    return path


def stack_settings(folder: Path) -> dict[str, Any]:
    """What the stack in `folder` was built with: `num_slots` (K) from its last stage's config, `family` and
    `tiny` (the preset) from the first config up its `previous` chain that holds them (stage 1's)."""
    config = json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))["config"]
    first = config
    while "tiny" not in first:
        first = first["previous"]
    return {"num_slots": config["num_slots"], "family": first["family"], "tiny": first["tiny"]}


def load_stack(
    spec: str,
    *,
    seed: int = 0,
    hook_layer: int | None = None,
    num_slots: int | None = None,
    **load_kwargs,
) -> Backbone:
    """`stack:<family>` → the default stack's last stage (`seed` is unused: the release is one model);
    `stack-init:<family>` → the same architecture and image processor at random init from `seed`.
    `num_slots` (the policy's K), when given, must be the K the stack was taught to emit."""
    folder = stack_folder(spec)
    if spec.startswith(STACK_PREFIX):
        taught = None if num_slots is None else int(stack_settings(folder)["num_slots"])
        if taught is not None and num_slots != taught:
            raise ValueError(
                f"{spec} was taught to emit K = {taught} <REF_POS> tokens, but the policy asks for "
                f"K = {num_slots}: use K = {taught}, or build a stack with `{STACK_COMMAND} --num-slots "
                f"{num_slots}` and pass the folder it prints as the backbone"
            )
        return load_backbone(folder, hook_layer=hook_layer, **load_kwargs)
    settings = stack_settings(folder)
    metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    tiny = {**settings["tiny"], "hook_layer": metadata["hook_layer"] if hook_layer is None else hook_layer}
    control = build_tiny(settings["family"], seed=seed, spec=TinySpec(**tiny))
    processor = json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    image_processor = control.processor.image_processor
    image_processor.size = type(image_processor.size)(**processor["image_processor"]["size"])
    control.name_or_path = stack_identity(spec, seed=seed)  # names the release: a new one is a new control
    return control


def stack_identity(spec: str, *, seed: int = 0) -> str:
    """What `load_stack(spec, seed=seed)` loads, named without loading it."""
    key = stack_key(spec)
    return key if spec.startswith(STACK_PREFIX) else f"{CONTROL_PREFIX}{key}@seed{seed}"
