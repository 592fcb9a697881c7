"""The SegCompass head (docs/design.md §3): sparse SAE concepts + concentration tokens → slot heatmaps,
confidences and SAM masks, with provenance.

Quick start::

    from segcompass.head import HeadConfig, build_head
    head = build_head(HeadConfig.tiny(d_in=64, d_sae=512, num_slots=policy.num_slots), sae)  # K: the policy's
    out = head(hook_states, concept_token_mask, concentration_states, image_embeddings, targets)
    out.losses.total.backward()
"""

from .aggregator import Aggregator, AggregatorOutput
from .codebook import QueryCodebook, densify_sparse_grad
from .concepts import ConceptInterface, check_sae
from .config import HeadConfig, LossConfig, SamDecoderConfig, SamEncoderConfig
from .fusion import SlotFusion
from .image_encoder import (
    ImageEmbeddingCache,
    build_sam_image_encoder,
    image_content_hash,
    load_sam_checkpoint,
)
from .losses import (
    HeadLosses,
    TooManyTargetsError,
    bce_per_pair,
    dice_per_pair,
    focal_per_pair,
    head_losses,
    prepare_targets,
)
from .mask_decoder import SamMaskHead
from .matching import Match, hungarian, match_slots, soft_iou_matrix
from .model import SegCompassHead, build_head, head_registry
from .outputs import HeadOutput, Provenance, SampleProvenance
from .param_groups import LR_MULTIPLIERS, build_optimizer, freeze_backbone_up_to_hook, head_param_groups
from .preprocess import SamImage, preprocess_image, preprocess_masks
from .slot_mapper import SlotMapper, SlotMapperOutput
from .support import ConceptSupport, SupportCache, TokenBags

__all__ = [
    "LR_MULTIPLIERS",
    "Aggregator",
    "AggregatorOutput",
    "ConceptInterface",
    "ConceptSupport",
    "HeadConfig",
    "HeadLosses",
    "HeadOutput",
    "ImageEmbeddingCache",
    "LossConfig",
    "Match",
    "Provenance",
    "QueryCodebook",
    "SamDecoderConfig",
    "SamEncoderConfig",
    "SamImage",
    "SamMaskHead",
    "SampleProvenance",
    "SegCompassHead",
    "SlotFusion",
    "SlotMapper",
    "SlotMapperOutput",
    "SupportCache",
    "TokenBags",
    "TooManyTargetsError",
    "bce_per_pair",
    "build_head",
    "build_optimizer",
    "build_sam_image_encoder",
    "check_sae",
    "densify_sparse_grad",
    "dice_per_pair",
    "focal_per_pair",
    "freeze_backbone_up_to_hook",
    "head_losses",
    "head_param_groups",
    "head_registry",
    "hungarian",
    "image_content_hash",
    "load_sam_checkpoint",
    "match_slots",
    "prepare_targets",
    "preprocess_image",
    "preprocess_masks",
    "soft_iou_matrix",
]
