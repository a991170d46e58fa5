"""What every contrastive loss shares: fp32 arithmetic under any autocast, and the global batch
gathered across ranks (open_clip's ``local_loss`` and ``gather_with_grad``)."""

from __future__ import annotations

import torch
from torch import nn

from medalign.losses.distributed import gather_no_grad, gather_with_grad, rank, world_size


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision features as float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _with_own_rows(gathered: torch.Tensor, own: torch.Tensor, first: int) -> torch.Tensor:
    """``gathered`` (no gradient) with rows ``first .. first + b`` replaced by ``own`` (with gradient)."""
    if gathered is own:
        return own
    return torch.cat([gathered[:first], own, gathered[first + own.shape[0]:]])


class ContrastiveLoss(nn.Module):
    """``loss(img, txt, scale, bias, labels, frozen_text)`` over the global batch; a subclass writes
    :meth:`compute` on the gathered features (its formula) and registers itself
    (:func:`medalign.losses.registry.register_loss`).

    ``img``, ``txt``: this rank's L2-normalised ``(b, D)`` features; ``labels``: ``(b, K)`` finding
    labels; ``frozen_text``: ``(b, E)`` frozen report embeddings; ``scale``, ``bias``: scalars.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True) -> None:
        super().__init__()
        #: open_clip's ``local_loss``: each rank forms only its own rows of the global-batch logits,
        #: ``(b, B)`` instead of ``(B, B)``; the gradient is the same (tests/test_distributed.py)
        self.local_loss = local_loss
        #: open_clip's ``gather_with_grad``: the gathered features carry gradient to every rank (exact).
        #: False: other ranks' features are constants, each rank's gradient flows through its own rows
        #: only (no backward all-reduce): the towers get 1/W of the exact gradient without ``local_loss``
        #: (the logit scale and bias their exact one), and no cross terms with it, as in open_clip
        self.gather_with_grad = gather_with_grad

    def forward(self, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, frozen_text: torch.Tensor | None = None) -> torch.Tensor:
        # similarities and loss in fp32 whatever the autocast (bf16 separates logits at scale 100 only
        # in steps of 0.5), from float features, as open_clip does
        with torch.autocast(device_type=img.device.type, enabled=False):
            img, txt, scale = _at_least_fp32(img), _at_least_fp32(txt), _at_least_fp32(scale)
            bias = _at_least_fp32(bias) if isinstance(bias, torch.Tensor) else bias
            first = rank() * img.shape[0]  # every rank holds b rows (the sampler drops incomplete batches)
            if self.gather_with_grad or world_size() == 1:
                img_all, txt_all = gather_with_grad(img), gather_with_grad(txt)
            else:  # constants from the other ranks around this rank's own rows
                img_all, txt_all = (_with_own_rows(gather_no_grad(x.detach()), x, first) for x in (img, txt))
            if not (self.local_loss and world_size() > 1):
                img, txt, first = img_all, txt_all, 0
            return self.compute(img, txt, img_all, txt_all, first, scale, bias, labels, frozen_text)

    def compute(self, img: torch.Tensor, txt: torch.Tensor, img_all: torch.Tensor, txt_all: torch.Tensor, first: int,
                scale: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor | None,
                frozen_text: torch.Tensor | None) -> torch.Tensor:
        """The loss of rows ``first .. first + len(img)`` of the global batch ``(img_all, txt_all)``
        (``img`` and ``txt`` are those rows; ``labels`` and ``frozen_text`` still this rank's)."""
        raise NotImplementedError
