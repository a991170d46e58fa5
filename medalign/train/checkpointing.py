"""Checkpoints that survive being killed: written to a temporary file, then renamed into place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medalign.errors import InputError
from medalign.io.atomic import storage_error


class AtomicCheckpointIO(TorchCheckpointIO):
    """``last.ckpt`` is always a whole checkpoint: the old one or the new one, never half."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        except BaseException as e:  # the previous checkpoint stays whole; a full disk is one line, exit 4
            tmp.unlink(missing_ok=True)
            refused = storage_error(path, e)
            if refused is not None:
                raise refused from None
            raise

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        # checkpoints hold tensors and plain containers only: never unpickle arbitrary objects
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except Exception as e:  # noqa: BLE001 - a refused pickle, a truncated file: the user needs the file and the reason
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise InputError(f"{path}: not a loadable checkpoint ({e.__class__.__name__}: {first})") from None


class LastCheckpoint(ModelCheckpoint):
    """``DIR/last.ckpt`` kept current every K optimizer steps (``None``: after every epoch), at the last
    step and at a stop asked for mid-run (a signal: ``trainer.should_stop``). (Lightning's ``save_last``
    only copies a checkpoint some other trigger saved: alone, it writes nothing until training ends.)"""

    def __init__(self, dirpath: Path | str, every_n_train_steps: int | None = None) -> None:
        super().__init__(dirpath=str(dirpath), filename="last", save_top_k=1, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        ending = trainer.should_stop or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)
        if ending and trainer.global_step != self._last_global_step_saved:
            # saved here, as the periodic saves are, and not after the loop has closed its epoch:
            # resuming from a checkpoint written at on_train_end skips the rest of a finished epoch
            trainer.save_checkpoint(str(Path(self.dirpath) / "last.ckpt"))
            self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_global_step_saved:  # the final steps fell between two triggers
            trainer.save_checkpoint(str(Path(self.dirpath) / "last.ckpt"))
            self._last_global_step_saved = trainer.global_step
