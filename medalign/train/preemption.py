"""Preemption keeps the work: SIGTERM or SIGUSR1 during training stops it at the next optimizer
step, after ``checkpoints/last.ckpt`` has been written, and the command exits with
:data:`~medalign.errors.EXIT_PREEMPTED`; ``--resume`` then continues exactly.

Cloud and Kubernetes schedulers send SIGTERM (then SIGKILL after a grace period); SLURM sends the
signal named in ``--signal`` (``SIGUSR1@120``). Under SLURM Lightning's own requeue handler is used
(it writes ``RUN/hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue``), but at the step boundary
rather than inside the signal: there it cannot land in the middle of another checkpoint write (the
nested save breaks fsspec's transaction) or of a collective. The signal handler itself only sets a
flag; the ranks agree on stopping at a step boundary (one all-reduce of two flags per step when
there are several), and Lightning's SIGTERM handler, which broadcasts inside the handler, is
replaced while training runs and restored after.
"""

from __future__ import annotations

import signal
import threading

import lightning as L
import torch

from medalign.errors import EXIT_PREEMPTED, Preempted  # noqa: F401 - the exit status and error this module stands for

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(L.Callback):
    """Turns SIGTERM / SIGUSR1 into a clean stop at the next optimizer step (``trainer.should_stop``:
    Lightning then ends the fit, and :class:`~medalign.train.checkpointing.LastCheckpoint` writes
    ``last.ckpt`` at that step). ``received`` names the signal afterwards (``None``: none came)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._pending: set[int] = set()
        self._previous: dict[int, object] = {}
        self._deferred: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled on the main thread
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            self._previous[signum] = previous
            if signum == signal.SIGUSR1 and callable(previous):  # Lightning's SLURM requeue: run at the step boundary
                self._deferred[signum] = previous
            signal.signal(signum, self._handler(trainer))

    def _handler(self, trainer):
        def handle(signum, frame) -> None:
            if not self._pending:
                launcher = trainer.strategy.launcher
                if launcher is not None and getattr(launcher, "procs", None):  # the ranks this process started
                    launcher.kill(signum)
            self._pending.add(signum)
        return handle

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches or trainer.should_stop:
            return  # only at an optimizer step: the data position then matches the weights exactly
        flags = [int(s in self._pending) for s in SIGNALS]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            agreed = torch.tensor(flags, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)  # any rank's signal stops all
            flags = agreed.tolist()
        arrived = [s for s, flag in zip(SIGNALS, flags) if flag]
        if not arrived:
            return
        for signum in arrived:
            if signum in self._deferred:  # every rank runs it: its checkpoint save is collective
                self._deferred[signum](signum, None)
        self.received = signal.Signals(arrived[0]).name
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore()  # before Lightning's teardown puts back the handlers it found

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.restore()

    def restore(self) -> None:
        """Put back the handlers found at the start of training."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
