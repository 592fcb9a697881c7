"""Execute the notebooks in place with their default parameters, so they are stored with their outputs
(a reader on a code host sees the tables and figures without running anything), and record what made them.

    nice -n 19 .venv/bin/python scripts/refresh_notebooks.py              # every notebook
    nice -n 19 .venv/bin/python scripts/refresh_notebooks.py coverage     # only notebooks/coverage.ipynb

Each notebook runs in `notebooks/` (its run folders there are ignored by git) on this interpreter, offline.
Its metadata gets `segcompass.outputs_made_by`: a sha256 over its code cells, the package version and the
identity of the backbones its parameters cell names (`segcompass.backbones.backbone_identity`: the
release key of the stack for `stack:` specs, the warm-up's stage key for `warm:` ones). `tests/test_notebooks.py` recomputes it and fails when the stored
outputs were made by other code cells, another package version or another default stack.

Figures are stored once, as HTML that loads plotly.js from its CDN (rendered by nbviewer, VS Code, and
Jupyter once the notebook is trusted); kaleido is not a dependency, so there are no static images, and a code
host that runs no JavaScript (GitHub's own notebook view) shows the tables and text but not the plots. To keep
each file under 2 MB the stored outputs are compacted for display (`compact_outputs`): plotly's JSON output is
dropped once its HTML is written, float64 arrays are stored as float32, image and heatmap panels larger than
`MAX_SIDE` pixels are subsampled (with their pixel spacing, so axes keep image coordinates), and progress bars
keep only their final state. Running the notebook gives the full-resolution interactive figures.
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np

import segcompass
from segcompass.backbones import backbone_identity

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("quick_tour.ipynb", "coverage.ipynb")
"""The notebooks stored with outputs (and executed by the tests)."""
COMMAND = "nice -n 19 .venv/bin/python scripts/refresh_notebooks.py"
"""The command that refreshes the stored outputs (named by the test that finds them stale)."""
METADATA_KEY = "segcompass"
BACKBONE_PARAMETERS = ("BACKBONE", "CONTROL_BACKBONE")
"""Parameters-cell names whose backbone specs are part of the record."""
PLOTLY_RENDERER = "plotly_mimetype+notebook_connected"
"""Plotly's JSON (compacted, then turned into the stored HTML) + the CDN loader of plotly.js (never inlined:
~4 MB)."""
CELL_TIMEOUT_S = 1800
MAX_SIDE = 100
"""Image and heatmap panels are stored at most about this many pixels on a side (subsampled)."""
PLOTLY_JSON = "application/vnd.plotly.v1+json"
MAX_BYTES = 2_000_000
"""A stored notebook larger than this fails the tests."""

logger = logging.getLogger("refresh_notebooks")


def parameters(nb) -> dict:
    """The literal assignments of the cell tagged `parameters`."""
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def record(nb) -> dict:
    """What the stored outputs depend on: code cells, package version, the backbones' identities."""
    params = parameters(nb)
    seed = int(params.get("SEED", 0))
    stack = {
        name: backbone_identity(params[name], seed=seed) for name in BACKBONE_PARAMETERS if params.get(name)
    }
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    inputs = {"code_cells": code, "segcompass": segcompass.__version__, "stack": stack}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {
        "outputs_made_by": digest,
        "segcompass_version": segcompass.__version__,
        "stack": stack,
        "refresh": COMMAND,
    }


def stale_reason(nb) -> str | None:
    """None when the stored outputs were made by this notebook's code cells, package version and stack;
    else what differs."""
    stored = nb.metadata.get(METADATA_KEY, {})
    now = record(nb)
    if stored.get("outputs_made_by") == now["outputs_made_by"]:
        return None
    if not stored:
        return "no record of what made its outputs"
    why = []
    if stored.get("segcompass_version") != now["segcompass_version"]:
        why.append(f"package version {stored.get('segcompass_version')} → {now['segcompass_version']}")
    if stored.get("stack") != now["stack"]:
        why.append(f"default stack {stored.get('stack')} → {now['stack']}")
    return "; ".join(why) or "its code cells changed since the outputs were made"


def _decode(spec: dict) -> np.ndarray:
    shape = [int(n) for n in str(spec.get("shape", "")).split(",") if n.strip()]
    array = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
    return array.reshape(shape) if shape else array


def _encode(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    spec = {
        "dtype": array.dtype.str.lstrip("<|="),
        "bdata": base64.b64encode(array.tobytes()).decode("ascii"),
    }
    if array.ndim > 1:
        spec["shape"] = ", ".join(str(n) for n in array.shape)
    return spec


def _compact_trace(trace: dict) -> None:
    """float64 → float32; an image / heatmap `z` larger than `MAX_SIDE` subsampled, its pixel spacing kept."""
    for key, value in list(trace.items()):
        if isinstance(value, dict) and "bdata" in value and value.get("dtype") == "f8":
            trace[key] = _encode(_decode(value).astype(np.float32))
    z = trace.get("z")
    if trace.get("type") not in ("image", "heatmap") or not isinstance(z, dict) or "bdata" not in z:
        return
    if "x" in trace or "y" in trace:
        return  # explicit coordinates: leave it
    array = _decode(z)
    step = int(np.ceil(max(array.shape[:2]) / MAX_SIDE))
    if array.ndim < 2 or step <= 1:
        return
    trace["z"] = _encode(array[::step, ::step])
    for axis in ("x", "y"):
        trace[f"d{axis}"] = trace.get(f"d{axis}", 1) * step


def _plotly_html(figure: dict) -> str:
    import plotly.io as pio

    return pio.to_html(figure, include_plotlyjs="cdn", full_html=False, validate=False)


def _carriage_returns(text: str) -> str:
    """What a terminal shows: each line keeps what follows its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def compact_outputs(nb) -> None:
    """Make the stored outputs small (module docstring): consecutive stream outputs merged with progress bars
    at their final state; each plotly figure compacted and stored as HTML only."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.outputs:
            if (
                out.output_type == "stream"
                and merged
                and merged[-1].output_type == "stream"
                and (merged[-1].name == out.name)
            ):
                merged[-1].text += out.text
                continue
            merged.append(out)
        for out in merged:
            if out.output_type == "stream":
                out.text = _carriage_returns(out.text)
            figure = out.get("data", {}).get(PLOTLY_JSON)
            if figure is not None:
                for trace in figure.get("data", []):
                    _compact_trace(trace)
                out.data["text/html"] = _plotly_html(figure)
                del out.data[PLOTLY_JSON]  # one copy of the figure: the HTML (plotly.js from its CDN)
        cell.outputs = [o for o in merged if o.output_type != "stream" or o.text.strip()]


def _kernel(folder: Path) -> str:
    """A kernel spec for this interpreter under `folder` (put on JUPYTER_PATH); returns its name."""
    name = "segcompass-refresh"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    return name


def refresh(path: Path, kernel: str) -> float:
    """Execute `path` in its folder, store it with its outputs and its record; returns the wall time."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    kernelspec = nb.metadata.get("kernelspec")
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - start
    if kernelspec is not None:
        nb.metadata["kernelspec"] = kernelspec  # the usual "python3", not this run's temporary kernel
    nb.metadata[METADATA_KEY] = record(nb)
    compact_outputs(nb)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        logger.warning(
            "%s is %.1f MB with its outputs (limit %.1f MB)", path.name, size / 1e6, MAX_BYTES / 1e6
        )
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"notebooks to refresh (default: {', '.join(NAMES)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [n if n.endswith(".ipynb") else f"{n}.ipynb" for n in args.names] or list(NAMES)
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        parser.error(f"unknown notebooks {unknown}; known: {list(NAMES)}")
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "PLOTLY_RENDERER": PLOTLY_RENDERER,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    with tempfile.TemporaryDirectory() as tmp:
        env["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, os.environ.get("JUPYTER_PATH", "")) if p)
        os.environ.update(env)
        kernel = _kernel(Path(tmp))
        for name in names:
            path = NOTEBOOKS / name
            logger.info("executing %s …", path.relative_to(ROOT))
            wall = refresh(path, kernel)
            logger.info("%s: %.0f s, %.2f MB stored", name, wall, path.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
