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
            torch.set_rng_state(self._rng_to_restore["torch"])
            if torch.cuda.is_available() and self._rng_to_restore.get("cuda"):
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.sampler.consumed = batch_idx + 1

    def state_dict(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict
        # not the loader's own state_dict: Lightning restores that only mid-epoch, and at an epoch
        # boundary the sampler would restart at epoch 0
        if "sampler" not in state_dict:
            raise InputError("the checkpoint holds no data position (written by an older medalign): start the run again")
        self.sampler.load_state_dict(state_dict["sampler"])
