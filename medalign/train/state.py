"""What Lightning does not restore on its own for an exact resume: the data position and the RNG."""

from __future__ import annotations

import lightning as L
import torch

from medalign.data.sampler import ResumableSampler


class TrainingStateCallback(L.Callback):
    """Keeps the sampler's batch count current and carries it and the torch RNG state (dropout) in checkpoints.

    The loader's position itself is saved by Lightning (the loader is stateful); this callback
    marks each batch as consumed before any checkpoint of that step is written (Lightning runs
    checkpoint callbacks last), and restores the global RNG right before the first resumed step.
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
        # Lightning restores a stateful loader only mid-epoch; at an epoch boundary the sampler would
        # restart at epoch 0, so its position travels here too (restoring it twice is harmless)
        if "sampler" in state_dict:
            self.sampler.load_state_dict(state_dict["sampler"])
