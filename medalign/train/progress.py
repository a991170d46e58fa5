"""Training progress that a log file shows as well as a terminal (see :mod:`medalign.progress`).

``step 1200/30000 (4.0%) · 41.3 volumes/s · loss 2.31 · lr 2.0e-4 · ETA 5h12m`` every interval,
one line per validation with its metrics, the real total (``max_steps``, or epochs × batches for a
job counted in epochs), rank 0 only. Lightning's own bar is off: it counts per epoch and reads
"Epoch 2/-2" under ``max_steps``.
"""

from __future__ import annotations

import lightning as L
import torch

from medalign.progress import Progress
from medalign.train.validation import ValidationHistory


class TrainingProgress(L.Callback):
    """Reports optimizer steps of a ``fit``: a live bar on a terminal, plain lines otherwise."""

    def __init__(self, history: ValidationHistory | None = None, live: bool | None = None, stream=None) -> None:
        self.history = history
        self.live = live
        self.stream = stream
        self.progress: Progress | None = None
        self._loss: torch.Tensor | None = None
        self._noted = 0

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        self.progress = Progress("", total, "step", start=trainer.global_step, rate_unit="volumes", extra=lambda: self._fields(trainer),
                                 live=self.live, stream=self.stream, enabled=trainer.is_global_zero)
        world = trainer.world_size
        resumed = f"resuming at step {trainer.global_step}" if trainer.global_step else "starting"
        self.progress.start_line(f"{resumed} · {world} process{'es' if world > 1 else ''} · precision {trainer.precision}")
        self._noted = len(self.history.entries) if self.history is not None else 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.progress is None:
            return
        if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
            self._loss = outputs["loss"].detach()
        elif isinstance(outputs, torch.Tensor):
            self._loss = outputs.detach()
        if trainer.global_step != self.progress.done:  # an optimizer step (not an accumulation micro-batch)
            volumes = _batch_size(batch) * trainer.world_size * trainer.accumulate_grad_batches
            self.progress.update(trainer.global_step, items=volumes * (trainer.global_step - self.progress.done))
        self._note_validation()  # medalign's own validation runs at a training batch's end

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self._note_validation()  # Lightning's validation loop (after ValidationHistory took it)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.progress is not None:
            self.progress.close(ending="done" if trainer.global_step >= self.progress.total else "stopped")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.progress is not None:
            self.progress.close(finished=False)

    def _note_validation(self) -> None:
        if self.history is None:
            return
        for entry in self.history.entries[self._noted:]:
            metrics = " · ".join(f"{k} {v:.3f}" for k, v in sorted(entry.items()) if k != "step")
            self.progress.note(f"validation at step {entry['step']}: {metrics}")
        self._noted = len(self.history.entries)

    def _fields(self, trainer) -> list[str]:
        out = []
        if self._loss is not None:
            out.append(f"loss {float(self._loss):.3g}")
        if trainer.optimizers:
            out.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}")
        return out


def _batch_size(batch) -> int:
    """Volumes in one device's batch (a dict with ``image``, or a tensor)."""
    image = batch.get("image") if isinstance(batch, dict) else batch
    return int(image.shape[0]) if isinstance(image, torch.Tensor) else 1
