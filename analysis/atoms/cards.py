"""Atom cards (top patches as image crops, top text contexts, activation histogram) and the summary figure.

Images are found through the corpus records (`corpus.jsonl`: record id = the store's source_id, `image`
relative to the corpus folder) or a folder of files named by source id; when an image cannot be loaded the
card says why and lists the patches instead.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis.atoms.examples import MARK
from analysis.atoms.naming import NamingResult
from analysis.common.inputs import AnalysisInputError

logger = logging.getLogger(__name__)

CARD_ORDERS = ("consistency", "frequency", "purity", "atoms")
"""How atoms are picked for cards: held-out AUC, firing frequency, label purity, or the listed atoms."""


class ImageSource:
    """source_id → image file; `load` returns (PIL RGB image or None, reason when None)."""

    def __init__(self, paths: dict[str, Path], origin: str, cache: int = 16) -> None:
        self.paths, self.origin = paths, origin
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._size = cache

    @classmethod
    def from_corpus(cls, path: str | os.PathLike) -> ImageSource:
        """Image paths of a corpus folder's records (`id`, `image`)."""
        root = Path(path)
        file = root / "corpus.jsonl" if root.is_dir() else root
        if not file.exists():
            raise FileNotFoundError(f"{path}: no corpus.jsonl")
        paths = {}
        with open(file, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if row.get("image"):
                        paths[str(row["id"])] = file.parent / row["image"]
        return cls(paths, str(file))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, file_map: dict[str, str] | None = None) -> ImageSource:
        """Files of a folder keyed by file name and stem, or by `file_map` (source_id → file name)."""
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist")
        if file_map is not None:
            return cls({str(k): root / v for k, v in file_map.items()}, str(root))
        files = [p for p in root.iterdir() if p.is_file()]
        return cls({**{p.stem: p for p in files}, **{p.name: p for p in files}}, str(root))

    def load(self, source_id: str):
        """(RGB image as displayed — EXIF orientation applied, the frame the store's pixel boxes are in —
        or None, why not)."""
        from sae.images import open_image

        if source_id in self._cache:
            self._cache.move_to_end(source_id)
            return self._cache[source_id], None
        path = self.paths.get(str(source_id))
        if path is None:
            return None, f"no image for {source_id} in {self.origin}"
        try:
            image = open_image(path)
        except OSError as err:
            return None, f"cannot read {path}: {err}"
        self._cache[source_id] = image
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return image, None


def crop_tiles(
    patches: pd.DataFrame, images: ImageSource | None, size: int = 72, margin: float = 0.5
) -> tuple[list[np.ndarray | None], str]:
    """(one uint8 [size, size, 3] crop per patch with the patch outlined in red, None where its image is
    unavailable; what was unavailable, "" when nothing).

    Each crop is the patch's pixel box widened by `margin` of its side on every side.
    """
    from PIL import ImageDraw

    if images is None:
        return [None] * len(patches), "images unavailable: no corpus or image folder was given"
    tiles: list[np.ndarray | None] = []
    problems = []
    for p in patches.itertuples():
        image, why = images.load(p.source_id)
        if image is None or not np.isfinite([p.x0, p.y0, p.x1, p.y1]).all():
            problems.append(why or f"doc {p.doc_id}: no pixel box")
            tiles.append(None)
            continue
        w, h = p.x1 - p.x0, p.y1 - p.y0
        box = (
            max(0, p.x0 - margin * w),
            max(0, p.y0 - margin * h),
            min(image.width, p.x1 + margin * w),
            min(image.height, p.y1 + margin * h),
        )
        crop = image.crop(tuple(round(v) for v in box))
        sx, sy = size / max(crop.width, 1), size / max(crop.height, 1)
        tile = crop.resize((size, size))
        ImageDraw.Draw(tile).rectangle(
            ((p.x0 - box[0]) * sx, (p.y0 - box[1]) * sy, (p.x1 - box[0]) * sx - 1, (p.y1 - box[1]) * sy - 1),
            outline=(255, 0, 0),
            width=2,
        )
        tiles.append(np.asarray(tile))
    problems = list(dict.fromkeys(problems))
    if tiles and all(t is None for t in tiles):
        return tiles, "images unavailable: " + "; ".join(problems)
    return tiles, ("some images unavailable: " + "; ".join(problems)) if problems else ""


def crop_mosaic(patches: pd.DataFrame, images: ImageSource | None, size: int = 72, margin: float = 0.5):
    """(uint8 [size, n·size, 3] mosaic of the patches' crops (`crop_tiles`; grey where unavailable), or None
    when no image could be loaded; message)."""
    tiles, message = crop_tiles(patches, images, size, margin)
    if not tiles or all(t is None for t in tiles):
        return None, message
    grey = np.full((size, size, 3), 230, dtype=np.uint8)
    return np.concatenate([t if t is not None else grey for t in tiles], axis=1), message


def png_uri(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _safe(text: str) -> str:
    """Plain text for plotly's pseudo-HTML (angle brackets of special tokens would read as tags)."""
    return html.escape(str(text).replace("<", "‹").replace(">", "›"), quote=False)


def _empty_panel(fig: go.Figure, lines: list[str]) -> None:
    """Hide the patch panel's axes and write `lines` in its middle."""
    fig.update_xaxes(visible=False, row=1, col=1)
    fig.update_yaxes(visible=False, row=1, col=1)
    panel = fig.get_subplot(1, 1)
    fig.add_annotation(
        text="<br>".join(_safe(t) for t in lines if t),
        showarrow=False,
        xref="paper",
        yref="paper",
        x=sum(panel.xaxis.domain) / 2,
        y=sum(panel.yaxis.domain) / 2,
        font={"size": 12},
    )


def atom_examples(
    result: NamingResult, atom: int, n_patches: int, n_contexts: int
) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """What a card of `atom` shows: its row of the naming table, all its examples by rank, its top
    `n_patches` image examples and top `n_contexts` text examples. An atom that was not named is an error."""
    row = result.table[result.table["atom"] == atom]
    if row.empty:
        raise AnalysisInputError(f"atom {atom} was not named (choose from the result's table)")
    ex = result.examples[result.examples["atom"] == atom].sort_values("rank")
    patches = ex[ex["token_type"] == "image"].head(n_patches)
    texts = ex[ex["token_type"] != "image"].head(n_contexts)
    return row.iloc[0], ex, patches, texts


def atom_card(
    result: NamingResult,
    atom: int,
    images: ImageSource | None = None,
    *,
    n_patches: int = 8,
    n_contexts: int = 10,
) -> go.Figure:
    """One atom's card: its top patches (crops), top text contexts (table) and activation histogram."""
    info, _, patches, texts = atom_examples(result, atom, n_patches, n_contexts)
    label = info["label"] if isinstance(info["label"], str) else "no label"
    fig = make_subplots(
        rows=2,
        cols=2,
        specs=[[{"type": "xy", "colspan": 2}, None], [{"type": "table"}, {"type": "xy"}]],
        row_heights=[0.35, 0.65],
        column_widths=[0.64, 0.36],
        vertical_spacing=0.12,
        subplot_titles=("top image patches", "top text contexts", "activation histogram"),
    )
    notes: list[str] = []
    if len(patches):
        mosaic, message = crop_mosaic(patches, images)
        size = mosaic.shape[0] if mosaic is not None else 1
        captions = [
            f"doc {p.doc_id} ({p.image_row},{p.image_col})<br>{p.activation:.3g}"
            for p in patches.itertuples()
        ]
        notes = [message] if message and mosaic is not None else []
        if mosaic is not None:
            fig.add_trace(go.Image(source=png_uri(mosaic), name="patches"), row=1, col=1)
            fig.update_xaxes(
                tickvals=[(i + 0.5) * size for i in range(len(patches))], ticktext=captions, row=1, col=1
            )
            fig.update_yaxes(showticklabels=False, row=1, col=1)
        else:
            _empty_panel(fig, [message, "; ".join(c.replace("<br>", " ") for c in captions)])
    else:
        _empty_panel(fig, ["no image examples"])
    contexts = [
        _safe(c).replace(_safe(MARK[0]), "<b>").replace(_safe(MARK[1]), "</b>") for c in texts["context"]
    ]
    fig.add_trace(
        go.Table(
            columnwidth=[1, 1.3, 1.2, 8],
            header={"values": ["rank", "act", "doc", "context"], "align": "left"},
            cells={
                "values": [texts["rank"], texts["activation"].round(3), texts["doc_id"], contexts],
                "align": "left",
            },
        ),
        row=2,
        col=1,
    )
    i = int(np.flatnonzero(result.table["atom"].to_numpy() == atom)[0])
    counts = result.hist[i, 1:-1]
    edges = result.hist_edges
    nz = np.flatnonzero(counts)
    if nz.size:
        sl = slice(nz[0], nz[-1] + 1)
        centres = np.sqrt(edges[:-1] * edges[1:])[sl]
        fig.add_trace(
            go.Bar(x=centres, y=counts[sl], width=np.diff(edges)[sl], name="codes", marker_color="#4c72b0"),
            row=2,
            col=2,
        )
        fig.update_xaxes(type="log", title_text="code (active tokens)", row=2, col=2)
    fig.update_yaxes(title_text="tokens", row=2, col=2)
    auc = info.get("auc")
    title = (
        f"atom {atom} — {label} (purity {info['purity']:.2f}, held-out AUC "
        f"{auc:.3f}, shuffled {info.get('shuffled_auc', np.nan):.3f}) — fires on {info['frequency']:.2%} of tokens"
        if isinstance(info["label"], str)
        else f"atom {atom} — {label} — fires on {info['frequency']:.2%} of tokens"
    )
    title = _safe(title) + "".join(f"<br><sup>{_safe(n)}</sup>" for n in notes)
    fig.update_layout(title=title, height=620, showlegend=False, margin={"t": 90})
    return fig


def select_card_atoms(table: pd.DataFrame, by: str, n: int, atoms: list[int] | None = None) -> list[int]:
    """Atoms that get cards: the listed ones, or the top `n` firing atoms of the trained model by `by`, taken
    in turn from each modality (image, text, unlabelled) so that both kinds of atom are shown."""
    if by not in CARD_ORDERS:
        raise AnalysisInputError(f"unknown card order {by!r}; choose from {CARD_ORDERS}")
    trained = table[(table["model"] == "trained") & (table["frequency"] > 0)]
    if atoms:
        missing = sorted(set(atoms) - set(table.loc[table["model"] == "trained", "atom"]))
        if missing:
            raise AnalysisInputError(f"card atoms {missing} were not named")
        return list(dict.fromkeys(atoms))
    if by == "atoms":
        return trained["atom"].head(n).tolist()
    col = {"consistency": "auc", "frequency": "frequency", "purity": "purity"}[by]
    order = trained.sort_values([col, "frequency"], ascending=False, na_position="last", kind="stable")
    queues = [list(g["atom"]) for _, g in order.groupby("modality", sort=True)]
    picked: list[int] = []
    while len(picked) < n and any(queues):
        picked.extend(q.pop(0) for q in queues if q)
    return picked[:n]


def consistency_figure(results: list[NamingResult]) -> go.Figure:
    """Held-out AUC of each labelled atom's own label vs shuffled labels, per model (box + points)."""
    fig = go.Figure()
    for r in results:
        own = r.table.dropna(subset=["auc"])
        fig.add_trace(
            go.Box(
                y=own["auc"],
                name=f"{r.model}: own labels",
                boxpoints="all",
                jitter=0.4,
                text=[_safe(f"atom {a}: {lab}") for a, lab in zip(own["atom"], own["label"], strict=True)],
            )
        )
        if len(r.shuffled):
            sh = r.shuffled.dropna(subset=["auc"])
            fig.add_trace(go.Box(y=sh["auc"], name=f"{r.model}: shuffled labels", boxpoints="outliers"))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance")
    fig.update_layout(
        yaxis_title="held-out ROC-AUC (label → atom fires)",
        yaxis_range=[0, 1.02],
        height=460,
        showlegend=False,
        template="plotly_white",
    )
    return fig
