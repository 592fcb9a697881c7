"""Independent answer checker: re-parses an instruction's TEXT with its own grammar and evaluates it on the
scene graph with vectorised attribute arrays.

It shares no selection code with the generator (`query.py`, `sampler.py`, `language.py`): its lexicon, its
parser and its evaluation are written separately, so a bug on either side shows up as a disagreement.
Ties are not broken: a singular phrase that fits several objects returns all of them.

Grammar (after lower-casing, dropping a leading command and the final "." or "?"):

    np      := det [supadj] [size] [colour] noun [clause] [[","] "nearest the" edge "edge"]
    det     := "the" | "every" | "all the"
    supadj  := largest | smallest | leftmost | rightmost | topmost | bottommost
    clause  := "with the same colour as" simple | "of the same kind as" simple | relation simple
    relation:= ["to the"] ("left" | "right") "of" | "above" | "below" | ("nearest" | "closest") "to"
    simple  := "the" [size] [colour] noun
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segcompass.world.scene import Scene

_COMMANDS = ("please segment ", "segment ", "find ", "show me ", "where is ", "where are ")
_COLOUR_WORDS = frozenset({"red", "green", "blue", "yellow", "purple", "orange", "cyan"})
_SHAPE_WORDS = frozenset({"circle", "square", "triangle", "diamond", "star", "cross", "hexagon"})
_SIZE_ORDER = {"small": 0, "medium": 1, "large": 2}
_EDGE_ADJ = {"leftmost": "left", "rightmost": "right", "topmost": "top", "bottommost": "bottom"}


class CheckerError(ValueError):
    """The instruction does not parse, or names an anchor that is missing or not unique."""


@dataclass
class _Simple:
    """A parsed simple noun phrase."""

    size: str | None
    """Size word, if any."""
    colour: str | None
    """Colour word, if any."""
    shape: str | None
    """Shape noun in singular; None for the generic noun "shape(s)"."""


@dataclass
class _Parsed:
    """A parsed instruction."""

    plural: bool
    """Determiner "every" / "all the" (True) or "the" (False)."""
    target: _Simple
    """The head noun phrase."""
    superlative: str | None = None
    """largest / smallest / left / right / top / bottom."""
    clause: str | None = None
    """same-colour / same-shape / left / right / above / below / nearest."""
    anchor: _Simple | None = None
    """The clause's anchor phrase."""


def _singular(word: str) -> str | None:
    """Shape noun in singular, None for "shape(s)"; raises on unknown nouns."""
    if word in ("shape", "shapes"):
        return None
    for cand in (word, word[:-1], word[:-2]):
        if cand in _SHAPE_WORDS:
            return cand
    raise CheckerError(f"unknown noun {word!r}")


class _Tokens:
    def __init__(self, words: list[str]) -> None:
        self.words, self.pos = words, 0

    def peek(self, k: int = 0) -> str | None:
        i = self.pos + k
        return self.words[i] if i < len(self.words) else None

    def take(self, *expected: str) -> bool:
        n = len(expected)
        if tuple(self.words[self.pos : self.pos + n]) == expected:
            self.pos += n
            return True
        return False

    def next(self) -> str:
        word = self.peek()
        if word is None:
            raise CheckerError("unexpected end of instruction")
        self.pos += 1
        return word


def _simple(tok: _Tokens) -> _Simple:
    size = tok.next() if tok.peek() in _SIZE_ORDER else None
    colour = tok.next() if tok.peek() in _COLOUR_WORDS else None
    return _Simple(size, colour, _singular(tok.next()))


def _clause(tok: _Tokens) -> str | None:
    if tok.take("with", "the", "same", "colour", "as"):
        return "same-colour"
    if tok.take("of", "the", "same", "kind", "as"):
        return "same-shape"
    for side in ("left", "right"):
        if tok.take("to", "the", side, "of") or tok.take(side, "of"):
            return side
    for word in ("above", "below"):
        if tok.take(word):
            return word
    if tok.take("nearest", "to") or tok.take("closest", "to"):
        return "nearest"
    return None


def parse_instruction(text: str) -> _Parsed:
    """Parse an instruction into the checker's own structure."""
    s = text.strip().lower().rstrip(".?").strip()
    for cmd in _COMMANDS:
        if s.startswith(cmd):
            s = s[len(cmd) :]
            break
    tok = _Tokens(s.replace(",", " , ").split())
    if tok.take("all", "the") or tok.take("every"):
        plural = True
    elif tok.take("the"):
        plural = False
    else:
        raise CheckerError(f"no determiner in {text!r}")
    sup = None
    if tok.peek() in ("largest", "smallest"):
        sup = tok.next()
    elif tok.peek() in _EDGE_ADJ:
        sup = _EDGE_ADJ[tok.next()]
    out = _Parsed(plural, _simple(tok), sup)
    out.clause = _clause(tok)
    if out.clause is not None:
        if not tok.take("the"):
            raise CheckerError(f"clause without an anchor in {text!r}")
        out.anchor = _simple(tok)
    tok.take(",")
    if tok.take("nearest", "the"):
        out.superlative = tok.next()
        if not tok.take("edge"):
            raise CheckerError(f"expected 'edge' in {text!r}")
    if tok.peek() is not None:
        raise CheckerError(f"trailing words {tok.words[tok.pos :]} in {text!r}")
    return out


def _select(phrase: _Simple, shape: np.ndarray, colour: np.ndarray, size: np.ndarray) -> np.ndarray:
    keep = np.ones(shape.shape, dtype=bool)
    if phrase.shape is not None:
        keep &= shape == phrase.shape
    if phrase.colour is not None:
        keep &= colour == phrase.colour
    if phrase.size is not None:
        keep &= size == _SIZE_ORDER[phrase.size]
    return keep


def check_targets(text: str, scene: Scene) -> list[int]:
    """Object indices the instruction refers to, computed from the text and the scene graph alone."""
    parsed = parse_instruction(text)
    objs = scene.objects
    shape = np.asarray([o.shape for o in objs])
    colour = np.asarray([o.colour for o in objs])
    size = np.asarray([_SIZE_ORDER[o.size_name] for o in objs])
    xy = np.asarray([[o.cx, o.cy] for o in objs], dtype=float)
    keep = _select(parsed.target, shape, colour, size)
    if parsed.anchor is not None:
        hits = np.flatnonzero(_select(parsed.anchor, shape, colour, size))
        if hits.size != 1:
            raise CheckerError(f"anchor matches {hits.size} objects in {text!r}")
        a = int(hits[0])
        keep[a] = False
        delta = xy - xy[a]
        conditions = {
            "same-colour": colour == colour[a],
            "same-shape": shape == shape[a],
            "left": delta[:, 0] < 0,
            "right": delta[:, 0] > 0,
            "above": delta[:, 1] < 0,
            "below": delta[:, 1] > 0,
        }
        if parsed.clause == "nearest":
            dist = np.sqrt((delta**2).sum(axis=1))
            if keep.any():
                keep &= dist == dist[keep].min()
        else:
            keep &= conditions[str(parsed.clause)]
    if parsed.superlative is not None and keep.any():
        value = {
            "largest": -size.astype(float),
            "smallest": size.astype(float),
            "left": xy[:, 0],
            "right": -xy[:, 0],
            "top": xy[:, 1],
            "bottom": -xy[:, 1],
        }[parsed.superlative]
        keep &= value == value[keep].min()
    return [int(i) for i in np.flatnonzero(keep)]
