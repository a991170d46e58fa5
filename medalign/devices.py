"""The one place that turns ``--device`` / ``trainer.accelerator`` into a device: inference commands
get a ``torch.device``, training commands a Lightning accelerator. A GPU asked for where none is
visible is one clear error, never a silent fall-back to the CPU."""

from __future__ import annotations

from medalign.errors import ConfigError


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str = "auto", where: str = "--device"):
    """``torch.device`` for ``device``: ``auto`` picks CUDA when available, else the CPU; ``cuda``
    (or ``cuda:N``) without a GPU raises :class:`ConfigError` naming ``where``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if _cuda_available() else "cpu")
    if device.startswith("cuda") and not _cuda_available():
        raise ConfigError(f"{where} {device}: no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"{where} {device}: expected auto, cpu, cuda or cuda:N") from None


def resolve_accelerator(accelerator: str = "auto", where: str = "--device") -> str:
    """The Lightning accelerator for ``accelerator`` (``auto``, ``cpu``, ``gpu``/``cuda``, or another
    Lightning name passed on): ``auto`` is ``gpu`` when CUDA is visible, else ``cpu``; a GPU asked for
    without one raises :class:`ConfigError` naming ``where``."""
    if accelerator == "auto":
        return "gpu" if _cuda_available() else "cpu"
    if accelerator in ("gpu", "cuda") or accelerator.startswith("cuda:"):
        if not _cuda_available():
            raise ConfigError(f"{where} {accelerator}: no CUDA device is available; use cpu (or auto)")
        return "gpu"
    return accelerator


def torch_device_of(accelerator: str):
    """The ``torch.device`` a resolved accelerator computes on outside the trainer (test-set scoring)."""
    import torch

    return torch.device("cuda" if accelerator == "gpu" else "cpu")
