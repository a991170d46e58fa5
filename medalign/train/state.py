"""What Lightning does not restore on its own for an exact resume: the data position and the RNG."""

from __future__ import annotations

import lightning as L
import torch

from medalign.data.sampler import ResumableSampler
from medalign.errors import InputError


class TrainingStateCallback(L.Callback):
    """Carries the data position (the sampler's epoch and batches consumed) and the torch RNG state
    (dropout) in checkpoints.

    Each batch is marked consumed before any checkpoint of that step is written (Lightning runs
    checkpoint callbacks last). On resume the sampler's position is restored at once (mid-epoch or
    at an epoch boundary alike; callbacks are restored before the first iterator is made) and the
    global RNG right before the first resumed step.
    """

    def __init__(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler
        self._rng_to_restore: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            per_rank = self._rng_to_restore.get("per_rank")
            # each rank its own generators (dropout differs per rank); older checkpoints held rank 0's only
            own = per_rank[trainer.global_rank] if per_rank and len(per_rank) == trainer.world_size else self._rng_to_restore
            torch.set_rng_state(own["torch"])
            if torch.cuda.is_available() and own.get("cuda") is not None and len(own["cuda"]):
                torch.cuda.set_rng_state(own["cuda"] if per_rank else own["cuda"][0])
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.sampler.consumed = batch_idx + 1

    def state_dict(self) -> dict:
        import torch.distributed as dist

        own = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
        per_rank = [own]
        if dist.is_available() and dist.is_initialized():  # every rank saves a checkpoint together; rank 0 writes all
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, own)
        return {"torch": own["torch"], "per_rank": per_rank, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict
        # not the loader's own state_dict: Lightning restores that only mid-epoch, and at an epoch
        # boundary the sampler would restart at epoch 0
        if "sampler" not in state_dict:
            raise InputError("the checkpoint holds no data position (written by an older medalign): start the run again")
        self.sampler.load_state_dict(state_dict["sampler"])
