"""Contrastive objectives: InfoNCE, SigLIP and report-aware soft-label targets (see docs/losses.md)."""

from medalign.losses.contrastive import (
    info_nce,
    siglip,
    soft_label_contrastive,
    targets_from_labels,
    targets_from_similarity,
)
from medalign.losses.distributed import gather_with_grad
from medalign.losses.objective import ContrastiveObjective, CWCLLoss, InfoNCELoss, SigLIPLoss, SoftLabelLoss

__all__ = [
    "CWCLLoss", "ContrastiveObjective", "InfoNCELoss", "SigLIPLoss", "SoftLabelLoss", "gather_with_grad", "info_nce", "siglip", "soft_label_contrastive",
    "targets_from_labels", "targets_from_similarity",
]
