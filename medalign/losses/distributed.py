"""Gathering features across data-parallel ranks so negatives and targets span the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of data-parallel processes (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's data-parallel rank (0 without torch.distributed)."""
    return dist.get_rank() if world_size() > 1 else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for the global rows and keeps its own."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # all_reduce, not reduce_scatter: gloo (CPU) has no reduce_scatter
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``(b, ...)`` from every rank into ``(world * b, ...)`` in rank order.

    Every rank must hold the same ``b`` (the sampler drops incomplete batches). Gradients flow back
    to each rank's own rows, summed over the ranks that computed the loss; with every rank computing
    the same global loss and DDP averaging, parameter gradients equal those of a single process on
    the global batch (``tests/test_distributed.py`` checks this for every loss).
    """
    if world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank (labels, frozen embeddings): no gradient."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def shard_rows(n: int) -> range:
    """The rows of ``n`` this rank handles when work is sharded: ``rank, rank + W, ...``."""
    return range(rank(), n, world_size())


def gather_sharded_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's ``local`` rows (its :func:`shard_rows` of ``n``) joined into ``(n, ...)`` in the
    original row order, on every rank. Ranks hold ``ceil`` or ``floor`` of ``n / W`` rows: each pads
    to the larger count for the all-gather, and the padding is dropped."""
    world = world_size()
    if world == 1:
        return local
    size = -(-n // world)
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        count = len(range(r, n, world))
        out[r::world] = part[:count]
    return out
