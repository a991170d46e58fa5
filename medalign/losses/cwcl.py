"""CWCL's continuously weighted targets from frozen report embeddings
(:func:`~medalign.losses.contrastive.targets_from_similarity`)."""

from __future__ import annotations

from medalign.losses.registry import register_loss
from medalign.losses.soft_labels import SoftTargetLoss


@register_loss("cwcl", description="CWCL: pairs weighted by how alike the frozen text tower finds their reports",
               report_embeddings="always", uses_mix=True)
class CWCLLoss(SoftTargetLoss):
    """Targets (1 − mix)·I + mix·W, Wᵢⱼ = (cos(eᵢ, eⱼ) + 1) / 2 of the frozen report embeddings, rows normalised."""

    def targets(self, labels, frozen_text, n, device):
        if frozen_text is None:
            raise ValueError("cwcl needs frozen report embeddings")
        return self.similarity_targets(frozen_text, n, device)
