"""An offline tokenizer for the tiny presets.

Real checkpoints bring their own tokenizers; the tiny presets cannot download one, so we train a small
byte-level BPE on a fixed vocabulary of the synthetic world and general instruction words. Byte-level
means any text encodes (no unknown token) and decodes back exactly. Training is deterministic: the same
corpus and settings give the same merges, so a tiny backbone built twice has the same token ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

#: Special tokens SegCompass itself needs, whatever the family.
REASONING_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<REF_POS>")

# Words the synthetic world, the warm-up tasks and typical instructions use; frequent merges make them
# one or two tokens each, which keeps tiny sequences short.
_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "and",
    "or",
    "to",
    "in",
    "on",
    "at",
    "by",
    "with",
    "for",
    "from",
    "is",
    "are",
    "was",
    "be",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "which",
    "what",
    "where",
    "who",
    "how",
    "many",
    "much",
    "there",
    "here",
    "not",
    "no",
    "none",
    "nothing",
    "any",
    "every",
    "each",
    "all",
    "both",
    "either",
    "neither",
    "only",
    "shape",
    "shapes",
    "object",
    "objects",
    "thing",
    "things",
    "one",
    "ones",
    "circle",
    "circles",
    "square",
    "squares",
    "triangle",
    "triangles",
    "diamond",
    "diamonds",
    "star",
    "stars",
    "cross",
    "crosses",
    "hexagon",
    "hexagons",
    "rectangle",
    "ellipse",
    "blob",
    "blobs",
    "stripe",
    "stripes",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "cyan",
    "white",
    "black",
    "grey",
    "gray",
    "brown",
    "magenta",
    "colour",
    "color",
    "colours",
    "small",
    "medium",
    "large",
    "big",
    "tiny",
    "largest",
    "smallest",
    "biggest",
    "bigger",
    "smaller",
    "same",
    "different",
    "other",
    "another",
    "left",
    "right",
    "top",
    "bottom",
    "middle",
    "centre",
    "center",
    "upper",
    "lower",
    "edge",
    "corner",
    "nearest",
    "closest",
    "farthest",
    "furthest",
    "above",
    "below",
    "beside",
    "next",
    "near",
    "far",
    "between",
    "behind",
    "front",
    "under",
    "over",
    "inside",
    "outside",
    "touching",
    "overlapping",
    "first",
    "second",
    "third",
    "last",
    "count",
    "image",
    "picture",
    "scene",
    "background",
    "texture",
    "noise",
    "gradient",
    "clutter",
    "find",
    "segment",
    "locate",
    "point",
    "show",
    "mark",
    "select",
    "give",
    "answer",
    "question",
    "reasoning",
    "think",
    "because",
    "so",
    "therefore",
    "then",
    "first",
    "second",
    "step",
    "yes",
    "no",
    "true",
    "false",
    "please",
    "can",
    "you",
    "see",
    "look",
    "identify",
    "describe",
    "user",
    "assistant",
    "system",
    "helpful",
    "USER",
    "ASSISTANT",
    "You",
    "are",
]

_TEMPLATES = (
    "the {w} {v}",
    "find the {w} {v} in the image",
    "where is the {w} {v}",
    "segment every {w} {v}",
    "<think> the {w} is {v} </think>",
)


def _training_corpus(words: Sequence[str]) -> list[str]:
    """Short sentences built from the word list, repeated so common pairs become merges."""
    corpus = [" ".join(words)]
    for i, w in enumerate(words):
        v = words[(i * 7 + 3) % len(words)]
        corpus.extend(t.format(w=w, v=v) for t in _TEMPLATES)
    corpus.extend(f"{n} {w}" for n in range(20) for w in ("shapes", "objects", "tokens"))
    return corpus


def build_tiny_tokenizer(
    special_tokens: Sequence[str],
    *,
    vocab_size: int = 1024,
    bos_token: str | None = None,
    eos_token: str = "<|endoftext|>",
    pad_token: str = "<|endoftext|>",
    unk_token: str | None = None,
    add_bos: bool = False,
    include_reasoning_tokens: bool = True,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline and wrap it for transformers.

    Args:
        special_tokens: family tokens (image placeholder, chat markers, ...). SegCompass's own
            `<think>`, `</think>` and `<REF_POS>` are always added after them.
        vocab_size: size of the learned vocabulary, special tokens included.
        bos_token, eos_token, pad_token, unk_token: the roles the family expects; each must be in
            `special_tokens` or be one of SegCompass's.
        add_bos: prepend `bos_token` when encoding (LLaVA/Llama convention).
        include_reasoning_tokens: add `<think>`, `</think>`, `<REF_POS>` (off only to mimic a released
            checkpoint's tokenizer in tests).
    """
    specials = list(dict.fromkeys([*special_tokens, *(REASONING_TOKENS if include_reasoning_tokens else ())]))
    for role, tok in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
        if tok is not None and tok not in specials:
            raise ValueError(f"{role} token {tok!r} is not among the special tokens {specials}")

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_training_corpus(_WORDS), trainer=trainer)
    if add_bos and bos_token is not None:
        from tokenizers import processors

        bos_id = core.token_to_id(bos_token)
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, bos_id)]
        )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        additional_special_tokens=[
            t for t in specials if t not in {bos_token, eos_token, pad_token, unk_token}
        ],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return tokenizer
