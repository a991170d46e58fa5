"""Contrastive objectives: InfoNCE, SigLIP and report-aware soft-label targets (see docs/losses.md).
Each loss is a module registering itself (:mod:`medalign.losses.registry`); formulas in :mod:`.contrastive`."""

from medalign.losses.base import ContrastiveLoss
from medalign.losses.clip import InfoNCELoss
from medalign.losses.contrastive import info_nce, siglip, soft_label_contrastive, targets_from_labels, targets_from_similarity
from medalign.losses.cwcl import CWCLLoss
from medalign.losses.distributed import gather_with_grad
from medalign.losses.registry import create_loss, list_losses, loss_entry, register_loss
from medalign.losses.sigmoid import SigLIPLoss
from medalign.losses.soft_labels import SoftLabelLoss

__all__ = [
    "CWCLLoss", "ContrastiveLoss", "InfoNCELoss", "SigLIPLoss", "SoftLabelLoss", "create_loss", "gather_with_grad", "info_nce", "list_losses",
    "loss_entry", "register_loss", "siglip", "soft_label_contrastive", "targets_from_labels", "targets_from_similarity",
]
