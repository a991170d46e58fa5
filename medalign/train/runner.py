"""The Lightning ``Trainer`` every medalign training job runs under (pretraining, fine-tuning): the
run folder's CSV and TensorBoard logs, atomic checkpoint files, medalign's own samplers, and quiet
output."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L

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


def make_trainer(folder: Path, callbacks: list, progress: bool, **options) -> L.Trainer:
    """A ``Trainer`` logging to ``folder/logs/metrics.csv`` and ``folder/tensorboard``; ``options`` are the
    job's own (steps or epochs, devices, precision, ...)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from medalign.errors import ConfigError

    folder = str(folder)
    try:
        return _trainer(folder, callbacks, progress, **options)
    except (ValueError, MisconfigurationException) as e:  # e.g. FSDP asked of a CPU: Lightning's reason, one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConfigError(f"trainer: {first}") from None


def _trainer(folder: str, callbacks: list, progress: bool, **options) -> L.Trainer:
    return L.Trainer(
        default_root_dir=folder,
        logger=[L.pytorch.loggers.CSVLogger(folder, name="logs", version=""),
                L.pytorch.loggers.TensorBoardLogger(folder, name="tensorboard", version="")],
        use_distributed_sampler=False,  # medalign's samplers split the data across ranks themselves
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        **options,
    )


def fit(trainer: L.Trainer, module: L.LightningModule, train_loader, val_loader=None, resume_from: Path | None = None) -> None:
    """``trainer.fit``, from ``resume_from`` when given, without warnings that do not apply here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")  # workers are configured
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")  # a CPU run chosen on purpose
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(resume_from) if resume_from else None)
