"""The training objective chosen by config: one of the losses, over the global batch."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from medalign.losses.contrastive import info_nce, siglip, soft_label_contrastive, targets_from_labels, targets_from_similarity
from medalign.losses.distributed import gather_no_grad, gather_with_grad, rank, world_size

LossName = Literal["info_nce", "siglip", "soft_labels", "cwcl"]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision features as float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class ContrastiveObjective(nn.Module):
    """``loss(img, txt, scale, bias, labels, frozen_text)`` with features gathered across ranks.

    ``soft_labels`` uses :func:`targets_from_labels` (averaged with :func:`targets_from_similarity`
    when frozen report embeddings are given); ``cwcl`` uses the similarity targets alone.
    """

    def __init__(self, name: LossName = "soft_labels", mix: float = 0.5, local_loss: bool = False,
                 gather_with_grad: bool = True) -> None:
        super().__init__()
        self.name = name
        self.mix = mix
        #: open_clip's ``local_loss``: each rank forms only its own rows of the global-batch logits,
        #: ``(b, B)`` instead of ``(B, B)``; the gradient is the same (tests/test_distributed.py)
        self.local_loss = local_loss
        #: open_clip's ``gather_with_grad``: the gathered features carry gradient to every rank (exact).
        #: False: other ranks' features are constants, each rank's gradient flows through its own rows
        #: only (no backward all-reduce): the towers get 1/W of the exact gradient without ``local_loss``
        #: (the logit scale and bias their exact one), and no cross terms with it, as in open_clip
        self.gather_with_grad = gather_with_grad

    def targets(self, labels: torch.Tensor | None, frozen_text: torch.Tensor | None, n: int, device) -> torch.Tensor:
        """Soft-target matrix ``(B, B)`` for the global batch."""
        eye = torch.eye(n, device=device)
        if self.name == "cwcl":
            if frozen_text is None:
                raise ValueError("cwcl needs frozen report embeddings")
            return (1 - self.mix) * eye + self.mix * targets_from_similarity(frozen_text)
        if labels is None:
            raise ValueError("soft_labels needs finding labels")
        t = targets_from_labels(labels, self.mix)
        if frozen_text is not None:
            t = 0.5 * (t + (1 - self.mix) * eye + self.mix * targets_from_similarity(frozen_text))
        return t

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        frozen_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # similarities and loss in fp32 whatever the autocast (bf16 separates logits at scale 100 only
        # in steps of 0.5), from float features, as open_clip does
        with torch.autocast(device_type=img.device.type, enabled=False):
            return self._loss(_at_least_fp32(img), _at_least_fp32(txt), _at_least_fp32(scale),
                              _at_least_fp32(bias) if isinstance(bias, torch.Tensor) else bias, labels, frozen_text)

    def _loss(self, img, txt, scale, bias, labels, frozen_text) -> torch.Tensor:
        first = rank() * img.shape[0]  # every rank holds b rows (the sampler drops incomplete batches)
        if self.gather_with_grad or world_size() == 1:
            img_all, txt_all = gather_with_grad(img), gather_with_grad(txt)
        else:  # constants from the other ranks around this rank's own rows
            img_all, txt_all = (_with_own_rows(gather_no_grad(x.detach()), x, first) for x in (img, txt))
        if not (self.local_loss and world_size() > 1):
            img, txt, first = img_all, txt_all, 0
        if self.name == "info_nce":
            return info_nce(img, txt, scale, img_all, txt_all, first)
        if self.name == "siglip":
            return siglip(img, txt, scale, bias if bias is not None else 0.0, txt_all, first)
        labels = gather_no_grad(labels) if labels is not None else None
        frozen_text = gather_no_grad(frozen_text) if frozen_text is not None else None
        targets = self.targets(labels, frozen_text, img_all.shape[0], img.device)
        return soft_label_contrastive(img, txt, targets, scale, img_all, txt_all, first)


def _with_own_rows(gathered: torch.Tensor, own: torch.Tensor, first: int) -> torch.Tensor:
    """``gathered`` (no gradient) with rows ``first .. first + b`` replaced by ``own`` (with gradient)."""
    if gathered is own:
        return own
    return torch.cat([gathered[:first], own, gathered[first + own.shape[0]:]])


class InfoNCELoss(ContrastiveObjective):
    """CLIP's InfoNCE (:func:`info_nce`) over the global batch."""

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__("info_nce", 0.0, local_loss, gather_with_grad)


class SigLIPLoss(ContrastiveObjective):
    """SigLIP's pairwise sigmoid loss (:func:`siglip`) over the global batch."""

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__("siglip", 0.0, local_loss, gather_with_grad)


class SoftLabelLoss(ContrastiveObjective):
    """MedCLIP / Cardiac-CLIP label-similarity targets (:func:`targets_from_labels`), blended by ``mix``."""

    def __init__(self, mix: float = 0.5, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__("soft_labels", mix, local_loss, gather_with_grad)


class CWCLLoss(ContrastiveObjective):
    """CWCL's continuously weighted targets from frozen report embeddings (:func:`targets_from_similarity`)."""

    def __init__(self, mix: float = 0.5, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__("cwcl", mix, local_loss, gather_with_grad)
