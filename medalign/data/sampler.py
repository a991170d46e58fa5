"""A seeded, rank-aware, resumable sampler: the data position is part of the training state.

Every epoch is a permutation drawn from ``(seed, epoch)`` alone, cut into global batches of
``batch_size * world`` studies; rank ``r`` takes its slice of each global batch, so a run on W
processes sees exactly the global batches a single process would. Each item is yielded as
``(index, draw)`` where ``draw`` numbers the sample since the start of training: the dataset seeds
its augmentation and sentence sampling from it, so an item's randomness never depends on worker
count, process or whether the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, draw)`` for this rank; ``state_dict``/``load_state_dict`` hold (epoch, batches done).

    Rank and world size are read when iterating (the process group exists by then), so the same
    object serves one process or many.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0  # the epoch the live iterator draws from
        self.consumed = 0  # batches of that epoch the training loop has used
        self._start = 0  # batches to skip at the next __iter__ (after a resume)
        self._started = False

    def batches_per_epoch(self) -> int:
        """Global batches per epoch (an incomplete last batch is dropped)."""
        _, world = _rank_and_world()
        return self.num_items // (self.batch_size * world)

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's order of all items ``(N,)``, a function of ``(seed, epoch)`` only."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._started:
            self.epoch += 1  # a new iterator is the next epoch
        self._started = True
        epoch, start = self.epoch, self._start
        self._start, self.consumed = 0, start
        rank, world = _rank_and_world()
        global_batch = self.batch_size * world
        per_epoch = self.batches_per_epoch()
        order = self.permutation(epoch).tolist()  # one conversion, not a tensor index per item
        for b in range(start, per_epoch):
            first = b * global_batch + rank * self.batch_size
            for pos in range(first, first + self.batch_size):
                yield order[pos], epoch * per_epoch * global_batch + pos

    def state_dict(self) -> dict:
        _, world = _rank_and_world()
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "num_items": self.num_items,
                "batch_size": self.batch_size, "world_size": world}

    def load_state_dict(self, state: dict) -> None:
        """Restore the position; a checkpoint from another data set, seed, per-rank batch or number of
        ranks is refused (its batches consumed count global batches of another size)."""
        from medalign.errors import InputError

        if state.get("num_items") != self.num_items or state.get("seed") != self.seed:
            raise InputError(
                f"the checkpoint's data position is for {state.get('num_items')} studies with seed {state.get('seed')}, "
                f"this run has {self.num_items} with seed {self.seed}"
            )
        _, world = _rank_and_world()
        saved = (state.get("batch_size", self.batch_size), state.get("world_size", world))
        if saved != (self.batch_size, world):
            raise InputError(
                f"the checkpoint was written with batch size {saved[0]} on {saved[1]} process(es), this run has batch size "
                f"{self.batch_size} on {world}: resume with the same data.batch_size and devices x nodes, or start a new run"
            )
        self.epoch, self._start, self.consumed = int(state["epoch"]), int(state["consumed"]), int(state["consumed"])
        if self._start >= self.batches_per_epoch():  # the checkpoint closed its epoch
            self.epoch, self._start, self.consumed = self.epoch + 1, 0, 0
        self._started = False


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` (its position travels in checkpoints through
    :class:`medalign.train.state.TrainingStateCallback`)."""

    def __init__(self, dataset, sampler: ResumableSampler, **kwargs) -> None:
        # an explicit generator: creating the iterator must not draw from the global RNG (exact resume)
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=True, **kwargs)


class ShardSampler(Sampler[int]):
    """Evaluation order: rank ``r`` of ``W`` takes items ``r, r + W, ...`` (no padding, no repeats);
    rank and world are read when iterating, like :class:`ResumableSampler`."""

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items

    def __len__(self) -> int:
        rank, world = _rank_and_world()
        return len(range(rank, self.num_items, world))

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_and_world()
        return iter(range(rank, self.num_items, world))
