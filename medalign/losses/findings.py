"""Study-level finding terms beside the contrastive loss: each study's report-derived finding labels
asked of its image embedding directly, so a finding the batch's contrast hardly separates (a small
nodule, one sentence in a long report) is still learned.

Two forms (``loss.findings.via``):

- ``prompts``: the zero-shot score itself, ``logit_k = s * <img, pos_k - neg_k>`` with ``pos_k`` and
  ``neg_k`` the text tower's embeddings of finding ``k``'s prompt pair, trained with binary
  cross-entropy; both towers learn ("prompt-based disease supervision in the shared vision-text
  embedding space", arXiv 2603.02026).
- ``head``: a linear head on the image embedding, ``logit = W img + b`` (supervised pretraining on
  report-extracted labels, as MPS-CT, arXiv 2509.13175); the text tower is left to the contrast.

``via: both`` sums the two terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_logits(img: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` logits ``s * <img, pos_k - neg_k>``: the log-odds of zero-shot's softmax over the
    pair. ``img`` ``(B, D)``, ``pos`` and ``neg`` ``(K, D)``, all unit vectors; ``scale`` a scalar."""
    return scale * img @ (pos - neg).T


def finding_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of ``logits`` ``(B, K)`` against soft ``targets`` ``(B, K)`` in
    [0, 1]; a NaN target (an uncertain label under ``labels.uncertain: ignore``) is left out."""
    known = ~torch.isnan(targets)
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) whole
    if logits.dtype in (torch.float16, torch.bfloat16):  # the loss in fp32 whatever the autocast, as the contrastive losses
        logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits[known], targets[known].to(logits.dtype))

