"""The Lightning ``Trainer`` every medalign training job runs under (pretraining, fine-tuning): the
run folder's CSV and TensorBoard logs, atomic checkpoint files, medalign's own samplers, progress
that a log file shows, a clean stop on SIGTERM/SIGUSR1, ``run.json``, and quiet output."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from medalign.train.checkpointing import AtomicCheckpointIO


def quiet_lightning() -> None:
    """Lightning sets its own INFO level on import; keep device banners and tips out of the output."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_cuda_backends(deterministic: bool = False) -> None:
    """On a CUDA device: cuDNN autotuning for the fixed-size 3D inputs (unless the run must be
    deterministic) and TF32 matmuls and convolutions for what stays in fp32. No effect on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def run_callbacks(run: Path, static, per_device_batch: int, progress: bool = True, command: list[str] | None = None):
    """The callbacks every training job carries, and the two its caller reads afterwards: returns
    ``(callbacks, preemption, history)``. ``history`` (:class:`ValidationHistory`) collects the
    validations; add it to the trainer's callbacks before any validation callback that feeds it.
    ``static``: a function giving the run's fixed facts, called on rank 0 only; ``command``: the
    command line ``run.json`` records (default: this process's)."""
    from medalign.train.preemption import PreemptionCallback
    from medalign.train.progress import TrainingProgress
    from medalign.train.run_record import RunRecord
    from medalign.train.validation import ValidationHistory

    preemption, history = PreemptionCallback(), ValidationHistory()
    callbacks = [preemption, RunRecord(run, static, per_device_batch, history, stopped_by=lambda: preemption.received, command=command)]
    if progress:
        callbacks.append(TrainingProgress(history))
    return callbacks, preemption, history


def stop_if_preempted(preemption, trainer: L.Trainer, resume_command: str) -> None:
    """Raise :class:`~medalign.train.preemption.Preempted` (exit 75) when a signal stopped the fit."""
    from medalign.errors import Preempted

    if preemption.received is not None:
        raise Preempted(f"stopped by {preemption.received} at step {trainer.global_step}; checkpoints/last.ckpt holds it: "
                        f"continue with {resume_command}")


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is kept (Lightning deletes it
    when the folder exists, so a resumed run would lose its earlier segments): the rows of the steps
    the resumed checkpoint holds stay, later rows (logged after that checkpoint, then lost) go, and
    the new rows are appended under the same header."""

    def __init__(self, log_dir: str, keep_below_step: int) -> None:
        self.keep_below_step = keep_below_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < self.keep_below_step]
        self.metrics_keys = header
        from medalign.io.atomic import atomic_write

        def _write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(path, _write)


class KeepingCSVLogger(L.pytorch.loggers.CSVLogger):
    """``RUN/logs/metrics.csv`` across resumes (:class:`_KeepingWriter`): a run started at step
    ``start_step`` keeps the earlier segments' rows below it."""

    def __init__(self, save_dir: str, start_step: int = 0) -> None:
        super().__init__(save_dir, name="logs", version="")
        self.start_step = start_step

    @property
    @rank_zero_experiment  # other ranks get a stand-in: only rank 0 touches the file
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.start_step)
        return self._experiment


def make_trainer(folder: Path, callbacks: list, start_step: int = 0, **options) -> L.Trainer:
    """A ``Trainer`` logging to ``folder/logs/metrics.csv`` (kept across resumes: ``start_step`` is the
    step the run resumes from) and ``folder/tensorboard``; ``options`` are the job's own (steps or
    epochs, devices, precision, ...). Lightning's progress bar is off: it counts per epoch
    (:class:`~medalign.train.progress.TrainingProgress` counts the run's steps)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from medalign.errors import ConfigError

    folder = str(folder)
    try:
        return _trainer(folder, callbacks, start_step, **options)
    except (ValueError, MisconfigurationException) as e:  # e.g. FSDP asked of a CPU: Lightning's reason, one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConfigError(f"trainer: {first}") from None


def _trainer(folder: str, callbacks: list, start_step: int, **options) -> L.Trainer:
    return L.Trainer(
        default_root_dir=folder,
        logger=[KeepingCSVLogger(folder, start_step),
                L.pytorch.loggers.TensorBoardLogger(folder, name="tensorboard", version="")],
        use_distributed_sampler=False,  # medalign's samplers split the data across ranks themselves
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def fit(trainer: L.Trainer, module: L.LightningModule, train_loader, val_loader=None, resume_from: Path | None = None) -> None:
    """``trainer.fit``, from ``resume_from`` when given, without warnings that do not apply here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # workers are configured
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")  # a CPU run chosen on purpose
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None)
