"""The default artefacts on the synthetic world — corpora, activation stores, SAEs — as cached stages
(`segcompass/stages.py`) under a run folder (`--out`):

    <out>/data/corpus-<sha>/         CORPUS_STAGE  (built whole, renamed into place)
    <out>/activations/store-<sha>/   STORE_STAGE   (resumable: an interrupted capture continues)
    <out>/sae/sae-<sha>/             SAE_STAGE     (resumable: an interrupted SAE training run continues)

Each stage's key covers every setting that decides its content and the key of the stage it reads, so a
changed setting never reuses a stale folder. Both the default analysis pipeline (`analysis.pipeline`) and
the training ablation (`segcompass.training.ablation`) build on them. Finished folders of the previous
layout (`legacy.py`) are still used.
"""

from .corpus import CORPUS_STAGE, CorpusConfig, world_corpus
from .keys import BUILD_COMMAND, backbone_key, stage_key
from .sae import (
    SAE_STAGE,
    TINY_SAE_ARCHITECTURE,
    TINY_SAE_DEAD_WINDOW,
    TINY_SAE_EPOCHS,
    TINY_SAE_K,
    SaeConfig,
    trained_sae,
)
from .store import STORE_STAGE, StoreConfig, activation_store

__all__ = [
    "BUILD_COMMAND",
    "CORPUS_STAGE",
    "SAE_STAGE",
    "STORE_STAGE",
    "TINY_SAE_ARCHITECTURE",
    "TINY_SAE_DEAD_WINDOW",
    "TINY_SAE_EPOCHS",
    "TINY_SAE_K",
    "CorpusConfig",
    "SaeConfig",
    "StoreConfig",
    "activation_store",
    "backbone_key",
    "stage_key",
    "trained_sae",
    "world_corpus",
]
