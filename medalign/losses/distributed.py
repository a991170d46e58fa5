"""Gathering features across data-parallel ranks so negatives and targets span the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of data-parallel processes (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(b, ...)`` from every rank into ``(world * b, ...)`` in rank order.

    Gradients flow back to each rank's own rows (``torch.distributed.nn.all_gather`` sums the
    incoming gradients across ranks); with every rank computing the same global loss and DDP
    averaging, parameter gradients equal those of a single process on the global batch.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (labels, frozen embeddings): no gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
