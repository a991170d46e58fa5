"""CLIP's InfoNCE over the global batch (:func:`~medalign.losses.contrastive.info_nce`)."""

from __future__ import annotations

import torch

from medalign.losses.base import ContrastiveLoss
from medalign.losses.contrastive import info_nce
from medalign.losses.registry import register_loss


@register_loss("info_nce", description="CLIP's InfoNCE: each study's own report is the one positive")
class InfoNCELoss(ContrastiveLoss):
    """½ (CE(Z, I) + CE(Zᵀ, I)), ``Z = s · img @ txtᵀ``."""

    def compute(self, img, txt, img_all, txt_all, first, scale, bias, labels, frozen_text) -> torch.Tensor:
        return info_nce(img, txt, scale, img_all, txt_all, first)
