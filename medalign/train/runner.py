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


def start_run(folder: Path, resume: bool, seed: int) -> Path | None:
    """Begin a training job in ``folder``: the checkpoint a ``--resume`` continues from (``None`` for a
    new run; ``--resume`` with nothing to resume is refused), then every RNG seeded from ``seed``."""
    from medalign.errors import InputError
    from medalign.train.run_folder import resume_checkpoint

    start_from = resume_checkpoint(Path(folder)) if resume else None
    if resume and start_from is None:
        raise InputError(f"{folder}: nothing to resume (no checkpoints/last.ckpt)")
    L.seed_everything(seed, workers=True, verbose=False)
    return start_from


def fit_run(folder: Path, module: L.LightningModule, sampler, train_loader, val_loader=None, *, static, per_device_batch: int,
            resume_from: Path | None, resume_command: str, progress: bool = True, command: list[str] | None = None,
            callbacks: list | None = None, validation_callbacks=None, best_every_n_steps: int | None = None, last_every_n_steps: int | None = None,
            **trainer_options) -> L.Trainer:
    """The one Lightning assembly of every training job: the services (``run.json``, progress, a clean
    stop on SIGTERM/SIGUSR1), the sampler's state in checkpoints, ``best.ckpt`` by ``val/macro_auroc``
    (when ``val_loader`` or ``validation_callbacks`` validate; every ``best_every_n_steps`` steps, else
    every epoch), ``last.ckpt`` (every ``last_every_n_steps`` steps, else every epoch), the trainer
    (``trainer_options``: steps or epochs, devices, precision, ...), the fit, and
    :class:`~medalign.errors.Preempted` when a signal stopped it. ``validation_callbacks(history)``
    returns the callbacks that validate and feed ``history``; ``callbacks``: the job's others. Returns the trainer."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medalign.train.checkpointing import LastCheckpoint
    from medalign.train.run_folder import checkpoint_step
    from medalign.train.state import TrainingStateCallback

    folder = Path(folder)
    services, preemption, history = run_callbacks(folder, static, per_device_batch=per_device_batch, progress=progress, command=command)
    validators = validation_callbacks(history) if validation_callbacks else []
    callbacks = [TrainingStateCallback(sampler), history, *(callbacks or []), *validators]
    if validators or val_loader is not None:
        callbacks.append(ModelCheckpoint(dirpath=str(folder / "checkpoints"), filename="best", monitor="val/macro_auroc", mode="max",
                                         save_top_k=1, every_n_train_steps=best_every_n_steps, enable_version_counter=False))
    # last: after "best" has taken this validation's score, so that last.ckpt carries the updated best (exact resume)
    callbacks.append(LastCheckpoint(folder / "checkpoints", every_n_train_steps=last_every_n_steps))
    folder.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(folder, callbacks + services, start_step=(checkpoint_step(resume_from) or 0) if resume_from else 0,
                           **trainer_options)
    fit(trainer, module, train_loader, val_loader, resume_from=resume_from)
    stop_if_preempted(preemption, trainer, resume_command)
    return trainer
