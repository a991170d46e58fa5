"""Report-aware soft targets: MedCLIP / Cardiac-CLIP label similarity
(:func:`~medalign.losses.contrastive.targets_from_labels`), and the shared soft-target loss."""

from __future__ import annotations

import torch

from medalign.losses.base import ContrastiveLoss
from medalign.losses.contrastive import soft_label_contrastive, targets_from_labels, targets_from_similarity
from medalign.losses.distributed import gather_no_grad
from medalign.losses.registry import register_loss


class SoftTargetLoss(ContrastiveLoss):
    """:func:`soft_label_contrastive` against a ``(B, B)`` target matrix that :meth:`targets` builds
    from the global batch's labels or frozen report embeddings; ``mix`` weighs it against I."""

    def __init__(self, mix: float = 0.5, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__(local_loss, gather_with_grad)
        self.mix = mix

    def targets(self, labels: torch.Tensor | None, frozen_text: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """Soft-target matrix ``(B, B)`` for the global batch (``labels`` ``(B, K)``, ``frozen_text`` ``(B, E)``)."""
        raise NotImplementedError

    def similarity_targets(self, frozen_text: torch.Tensor, n: int, device) -> torch.Tensor:
        """CWCL's targets blended with I: (1 − mix)·I + mix·W."""
        return (1 - self.mix) * torch.eye(n, device=device) + self.mix * targets_from_similarity(frozen_text)

    def compute(self, img, txt, img_all, txt_all, first, scale, bias, labels, frozen_text) -> torch.Tensor:
        labels = gather_no_grad(labels) if labels is not None else None
        frozen_text = gather_no_grad(frozen_text) if frozen_text is not None else None
        targets = self.targets(labels, frozen_text, img_all.shape[0], img.device)
        return soft_label_contrastive(img, txt, targets, scale, img_all, txt_all, first)


@register_loss("soft_labels", description="MedCLIP / Cardiac-CLIP: studies whose reports name the same findings are soft positives",
               needs_labels=True, report_embeddings="with_similarity", uses_mix=True)
class SoftLabelLoss(SoftTargetLoss):
    """Targets (1 − mix)·I + mix·P from the finding labels; averaged with CWCL's when frozen report
    embeddings are given (``loss.with_similarity``)."""

    def targets(self, labels, frozen_text, n, device) -> torch.Tensor:
        if labels is None:
            raise ValueError("soft_labels needs finding labels")
        t = targets_from_labels(labels, self.mix)
        if frozen_text is not None:
            t = 0.5 * (t + self.similarity_targets(frozen_text, n, device))
        return t
