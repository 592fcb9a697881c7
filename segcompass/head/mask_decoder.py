"""SAM prompt encoder (heatmap as dense mask prompt) + SAM two-way mask decoder, one mask per slot.

segment-anything's `MaskDecoder.predict_masks` repeats one image's embedding for every prompt; here each
slot has its own image (B images × K slots), so the same computation is run with the embedding of each
slot's image. The modules and parameter names are segment-anything's, so SAM checkpoints load.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import Tensor, nn

from .config import SamDecoderConfig


class SamMaskHead(nn.Module):
    """`prompt_encoder` + `mask_decoder` of SAM.

    Args:
        cfg: decoder shape.
        embed_dim: image-embedding channels (256).
        grid_size: image-embedding side (64).
        img_size: padded input image side (1024).
    """

    def __init__(
        self, cfg: SamDecoderConfig, embed_dim: int = 256, grid_size: int = 64, img_size: int = 1024
    ):
        super().__init__()
        self.prompt_encoder = PromptEncoder(
            embed_dim=embed_dim,
            image_embedding_size=(grid_size, grid_size),
            input_image_size=(img_size, img_size),
            mask_in_chans=cfg.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg.transformer_depth,
                embedding_dim=embed_dim,
                mlp_dim=cfg.transformer_mlp_dim,
                num_heads=cfg.transformer_heads,
            ),
            transformer_dim=embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        )

    def forward(self, image_embeddings: Tensor, heatmap_logits: Tensor) -> Tensor:
        """Single-mask prediction for every slot.

        Args:
            image_embeddings: [B, 256, g, g].
            heatmap_logits: [B, K, 4g, 4g] slot heatmaps used as dense mask prompts.
        Returns:
            mask logits [B, K, 4g, 4g].
        """
        b, k, s, _ = heatmap_logits.shape
        sparse, dense = self.prompt_encoder(
            points=None, boxes=None, masks=heatmap_logits.reshape(b * k, 1, s, s)
        )
        # sparse: [B·K, 0, 256]; dense: [B·K, 256, g, g]
        image_index = torch.arange(b, device=heatmap_logits.device).repeat_interleave(k)  # [B·K]
        masks = self.predict(image_embeddings, image_index, sparse, dense)  # [B·K, 4g, 4g]
        return masks.view(b, k, *masks.shape[-2:])

    def predict(self, image_embeddings: Tensor, image_index: Tensor, sparse: Tensor, dense: Tensor) -> Tensor:
        """SAM's `predict_masks` with one image per prompt, single-mask output.

        Args:
            image_embeddings: [B, 256, g, g].
            image_index: [N] the image of each prompt.
            sparse: [N, n, 256] encoded points (n may be 0); dense: [N, 256, g, g] encoded mask prompts
                (or SAM's no-mask embedding).
        Returns:
            mask logits [N, 4g, 4g].
        """
        dec = self.mask_decoder
        n = sparse.shape[0]
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)  # [1 + M, 256]
        tokens = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)  # [N, 1 + M + n, 256]
        src = image_embeddings.to(dense.dtype)[image_index] + dense  # [N, 256, g, g]
        pos = self.prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)  # [N, 256, g, g]
        _, c, h, w = src.shape
        hs, src_out = dec.transformer(src, pos, tokens)  # [N, 1 + M + n, 256], [N, g·g, 256]
        mask_token = hs[:, 1, :]  # single-mask output token, [N, 256]
        up = dec.output_upscaling(src_out.transpose(1, 2).reshape(n, c, h, w))  # [N, 32, 4g, 4g]
        hyper = dec.output_hypernetworks_mlps[0](mask_token)  # [N, 32]
        _, c2, h2, w2 = up.shape
        return (hyper.unsqueeze(1) @ up.view(n, c2, h2 * w2)).view(n, h2, w2)  # [N, 4g, 4g]

    def load_sam_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load the `prompt_encoder.*` and `mask_decoder.*` entries of a full SAM state dict."""
        own = {k: v for k, v in state_dict.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
        if strict and not own:
            raise KeyError(
                "the state dict has no prompt_encoder.* / mask_decoder.* entries (not a SAM checkpoint?)"
            )
        self.load_state_dict(own, strict=strict)
