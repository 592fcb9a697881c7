"""Checkpoints of the training loops inside a stage's build, so an hour-long stage that is interrupted
continues where it stopped instead of starting again.

A resumable stage (`stages.Stage.resumable`) is built in place in `<key>.partial`. Its build runs inside
`checkpointing(folder)`, and every training loop in it opens a `LoopCheckpoint`. The n-th loop of the build
writes `folder/loops/checkpoints/loop<n>-step-<N>/` (`sae.files.checkpoints`: written under a temporary name,
complete when `state.json` exists, only the newest kept) every `every_s` seconds, when it finishes, and when
it is interrupted (Ctrl-C) outside a parameter update (then with the generators as the interrupted step
found them). A checkpoint holds everything the next step depends on:

- `modules.safetensors`: the loop's trained modules' weights (and other tensors it updates, `LoopState.tensors`);
- `optimizer.pt`: the optimiser and scheduler states, the global torch RNG and any `torch.Generator` the loop
  draws from (loaded with `weights_only=True`);
- `log.json`: the loss of every step so far and the loop's seconds;
- `state.json` (the marker, written last): the step, the loop's settings and its numpy generators' states.

When the build is run again, each loop restores its newest checkpoint: a finished loop restores its final
weights and returns without a step, an unfinished one continues from its step with the same batches. The
result is bit-identical to an uninterrupted build on the same thread count (the code between the loops must
be deterministic, as the stages' builds are). A checkpoint written by a loop with other settings is refused
with an error that names the settings that differ, and one that cannot be read with a `CorruptFileError`;
both say which folder to delete. When the build returns, its `loops/` folder is deleted. `stages.build_stage`
runs every resumable stage's build in `checkpointing`.

`CheckpointedLoop` drives a loop's steps around its checkpoint (restore, periodic and final saves, the save
on Ctrl-C, a progress bar), so a loop only computes its loss and updates. Outside `checkpointing` (a loop run
from a notebook), `open_loop` gives a checkpoint that writes nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from sae.files import CorruptFileError, atomic_write_text, read_json
from sae.files.checkpoints import CheckpointSeries
from sae.training.config import config_differences

logger = logging.getLogger(__name__)

EVERY_S = 300.0
"""Default seconds between two checkpoints of a loop (a tiny stage's checkpoint takes well under a second)."""
LOOPS_DIR = "loops"
"""The loops' checkpoints live in `<build folder>/loops/checkpoints/`."""
STATE_FILE = "state.json"
MODULES_FILE = "modules.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
LOG_FILE = "log.json"


@dataclass
class _Build:
    """The checkpointing context of one stage build."""

    folder: Path
    every_s: float
    loops: int = 0
    """Loops opened so far: the next one's number."""


_current: contextvars.ContextVar[_Build | None] = contextvars.ContextVar("loop_checkpoints", default=None)


@contextlib.contextmanager
def checkpointing(folder: str | Path, every_s: float = EVERY_S) -> Iterator[None]:
    """Within this context the training loops checkpoint into `folder/loops/` and resume from there; on a
    normal exit that folder is deleted (the build is complete)."""
    build = _Build(Path(folder) / LOOPS_DIR, every_s)
    token = _current.set(build)
    try:
        yield
    finally:
        _current.reset(token)
    shutil.rmtree(build.folder, ignore_errors=True)


@dataclass
class LoopState:
    """What a loop carries from step to step besides its modules' weights."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    """An `LRScheduler` (anything with `state_dict` / `load_state_dict`)."""
    numpy_rngs: Sequence[np.random.Generator] = ()
    torch_generators: Sequence[torch.Generator] = ()
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """Other tensors the loop updates in place (e.g. a moving average of the weights), by name."""


@dataclass
class Restored:
    """Where a loop stands after `LoopCheckpoint.restore`."""

    step: int = 0
    """Steps already done (0: a fresh start)."""
    losses: list[float] = field(default_factory=list)
    """The loss of each step done."""
    parts: list[dict[str, float]] = field(default_factory=list)
    """The loss parts of each step done (empty where the loop keeps none)."""
    wall_s: float = 0.0
    """Seconds the loop had run before."""


def _named_tensors(modules: Sequence[nn.Module], extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The modules' states as `<module index>.<name>` → tensor, and `extra` as `extra.<name>`; a tensor that
    shares memory with one before it (tied weights) is copied, since safetensors stores each buffer once."""
    named = [(f"{i}.{k}", v) for i, m in enumerate(modules) for k, v in m.state_dict().items()]
    named += [(f"extra.{k}", v) for k, v in extra.items()]
    out, seen = {}, set()
    for name, tensor in named:
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as `a.b.c` → value (so a refusal names the one setting that differs)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class LoopCheckpoint:
    """The checkpoints of one training loop (`open_loop`)."""

    def __init__(
        self,
        build: _Build | None,
        index: int,
        settings: dict[str, Any],
        modules: Sequence[nn.Module],
        state: LoopState,
    ) -> None:
        self._build = build
        self._series = CheckpointSeries(f"loop{index}-step", 7, STATE_FILE)
        self._settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
        self._modules = list(modules)
        self._state = state
        self._last = time.monotonic()
        self._step_start: tuple[list[Any], torch.Tensor, list[torch.Tensor]] | None = None

    @property
    def active(self) -> bool:
        """Whether this loop writes checkpoints (inside `checkpointing`)."""
        return self._build is not None

    def restore(self) -> Restored:
        """Load the newest checkpoint of this loop into its modules and state, if there is one."""
        if self._build is None:
            return Restored()
        out = self._build.folder
        self._series.remove_temporaries(out)
        found = self._series.list(out)
        if not found:
            return Restored()
        path = found[-1].path
        record = read_json(path / STATE_FILE, "loop checkpoint state")
        if record.get("settings") != self._settings:
            differences = config_differences(_flat(record.get("settings", {})), _flat(self._settings))
            raise ValueError(
                f"the loop checkpoint {path} was written by a loop with other settings "
                f"({'; '.join(differences)}); delete {out} to build the stage from the start"
            )
        try:
            tensors = load_file(str(path / MODULES_FILE))
            blob = torch.load(path / OPTIMIZER_FILE, weights_only=True)
            log = read_json(path / LOG_FILE, "loop checkpoint log")
        except Exception as err:
            raise CorruptFileError(
                f"the loop checkpoint {path} cannot be read ({type(err).__name__}: {err}); delete {out} to "
                "build the stage from the start"
            ) from err
        for i, module in enumerate(self._modules):
            prefix = f"{i}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        with torch.no_grad():
            for name, tensor in self._state.tensors.items():
                tensor.copy_(tensors[f"extra.{name}"])
        self._state.optimizer.load_state_dict(blob["optimizer"])
        self._state.scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        for g, s in zip(self._state.torch_generators, blob["generators"], strict=True):
            g.set_state(s)
        for rng, s in zip(self._state.numpy_rngs, record["numpy_rngs"], strict=True):
            rng.bit_generator.state = s
        logger.info(
            "%s: resumed at step %d from %s", self._settings.get("desc", "loop"), record["step"], path
        )
        self._last = time.monotonic()
        return Restored(int(record["step"]), log["losses"], log["parts"], float(log["wall_s"]))

    def due(self) -> bool:
        """Whether `every_s` has passed since the last checkpoint (or the restore)."""
        return self._build is not None and time.monotonic() - self._last >= self._build.every_s

    def _rng_states(self) -> tuple[list[Any], torch.Tensor, list[torch.Tensor]]:
        numpy_states = [rng.bit_generator.state for rng in self._state.numpy_rngs]
        return numpy_states, torch.get_rng_state(), [g.get_state() for g in self._state.torch_generators]

    def begin_step(self) -> None:
        """Note the generators' states before the next step draws from them (`save(..., at_step_start=True)`);
        call it before the first step and after each update."""
        if self._build is not None:
            self._step_start = self._rng_states()

    def save(
        self,
        step: int,
        losses: list[float],
        parts: list[dict[str, float]],
        wall_s: float,
        at_step_start: bool = False,
    ) -> None:
        """Write the checkpoint after `step` steps (keeping only this one of the loop's). `at_step_start`:
        the step after them was interrupted part way (before any update), so the generators are saved as
        `begin_step` found them."""
        if self._build is None or self._series.path(self._build.folder, step).is_dir():
            return
        numpy_states, torch_rng, generators = (
            self._step_start if at_step_start and self._step_start is not None else self._rng_states()
        )
        with self._series.write(self._build.folder, step, keep=1) as tmp:
            save_file(_named_tensors(self._modules, self._state.tensors), str(tmp / MODULES_FILE))
            blob = {
                "optimizer": self._state.optimizer.state_dict(),
                "scheduler": self._state.scheduler.state_dict(),
                "torch_rng": torch_rng,
                "generators": generators,
            }
            torch.save(blob, tmp / OPTIMIZER_FILE)
            log = {"losses": losses, "parts": parts, "wall_s": wall_s}
            (tmp / LOG_FILE).write_text(json.dumps(log))
            state = {
                "step": step,
                "settings": self._settings,
                "numpy_rngs": numpy_states,
            }
            atomic_write_text(tmp / STATE_FILE, json.dumps(state, sort_keys=True))
        self._last = time.monotonic()


def open_loop(settings: dict[str, Any], modules: Sequence[nn.Module], state: LoopState) -> LoopCheckpoint:
    """The next loop of the current build (`checkpointing`), identified by its order in the build and by
    `settings` (anything that decides its steps: schedule, seed, description); the trained modules' names
    and shapes are added to them. Outside a build: a checkpoint that writes nothing."""
    build = _current.get()
    if build is None:
        return LoopCheckpoint(None, 0, settings, modules, state)
    shapes = {k: list(v.shape) for k, v in _named_tensors(modules, state.tensors).items()}
    index, build.loops = build.loops, build.loops + 1
    return LoopCheckpoint(build, index, {**settings, "tensors": shapes}, modules, state)


class CheckpointedLoop:
    """A loop's steps around its checkpoint::

        with CheckpointedLoop(open_loop(settings, modules, state), steps, "desc") as loop:
            for step in loop.steps():
                loss = ...                      # draws from the state's generators
                with loop.update():
                    loss.backward(); optimizer.step(); scheduler.step()
                loop.record(float(loss), parts)

    It restores the newest checkpoint first (`losses`, `parts` and the steps continue from it), saves every
    `every_s`, saves when the last step is done (so that a resumed build skips the loop), and on Ctrl-C saves the
    state of the steps recorded so far unless the interrupt came inside `update`."""

    def __init__(self, checkpoint: LoopCheckpoint, total: int, desc: str, progress: bool = True) -> None:
        self.checkpoint = checkpoint
        self.total = total
        self.desc = desc
        self.progress = progress
        self.restored = checkpoint.restore()
        self.losses: list[float] = list(self.restored.losses)
        """The loss of every step so far (restored ones first)."""
        self.parts: list[dict[str, float]] = list(self.restored.parts)
        """The loss parts of every step so far."""
        self.bar: Any = None
        """The progress bar while `steps` runs."""
        self._start = time.perf_counter()
        self._updating = False

    @property
    def wall_s(self) -> float:
        """Seconds in the loop, those before a resume included."""
        return self.restored.wall_s + time.perf_counter() - self._start

    def __enter__(self) -> CheckpointedLoop:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if kind is None and self.restored.step < self.total:
            self.checkpoint.save(self.total, self.losses, self.parts, self.wall_s)
        elif kind is not None and issubclass(kind, KeyboardInterrupt) and self.checkpoint.active:
            if self._updating:  # the weights may be half updated: the last checkpoint stands
                return
            step = len(self.losses)
            self.checkpoint.save(step, self.losses, self.parts, self.wall_s, at_step_start=True)
            logger.warning("%s: interrupted; run the build again to continue from step %d", self.desc, step)

    def steps(self) -> Iterator[int]:
        """The step numbers still to run, with a progress bar and the periodic checkpoints."""
        self.bar = tqdm(
            range(self.restored.step, self.total),
            desc=self.desc,
            disable=not self.progress,
            initial=self.restored.step,
            total=self.total,
        )
        self.checkpoint.begin_step()
        for step in self.bar:
            yield step
            if self.checkpoint.due() and step + 1 < self.total:
                self.checkpoint.save(step + 1, self.losses, self.parts, self.wall_s)

    @contextlib.contextmanager
    def update(self) -> Iterator[None]:
        """Wrap the parameter update: an interrupt inside it leaves the last checkpoint as it is."""
        self._updating = True
        yield

    def record(self, loss: float, parts: dict[str, float] | None = None) -> None:
        """A step is done: its loss (and parts) are kept and the next step's generator states noted."""
        self.losses.append(loss)
        if parts is not None:
            self.parts.append(parts)
        self._updating = False
        self.checkpoint.begin_step()
