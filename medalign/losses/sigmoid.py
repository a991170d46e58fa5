"""SigLIP's pairwise sigmoid loss over the global batch (:func:`~medalign.losses.contrastive.siglip`)."""

from __future__ import annotations

import torch

from medalign.losses.base import ContrastiveLoss
from medalign.losses.contrastive import siglip
from medalign.losses.registry import register_loss


@register_loss("siglip", description="SigLIP: a sigmoid per pair, with a learnable logit bias", needs_bias=True)
class SigLIPLoss(ContrastiveLoss):
    """−(1/B) Σᵢⱼ log σ(zᵢⱼ (Zᵢⱼ + b)), zᵢⱼ = +1 on the diagonal, −1 elsewhere (b = 0 without a bias)."""

    def compute(self, img, txt, img_all, txt_all, first, scale, bias, labels, frozen_text) -> torch.Tensor:
        return siglip(img, txt, scale, bias if bias is not None else 0.0, txt_all, first)
