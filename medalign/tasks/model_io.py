"""Finding the exported model behind ``--checkpoint RUN`` and choosing the device."""

from __future__ import annotations

from pathlib import Path

import torch

from medalign.errors import InputError
from medalign.models import DualEncoder


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available")
    return torch.device(device)


def resolve_export(checkpoint: Path) -> Path:
    """RUN folder -> RUN/model; an export folder as is; a ``.ckpt`` file -> its run's export."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise InputError(f"{checkpoint}: no such run, model folder or checkpoint")
    if checkpoint.is_file() and checkpoint.suffix == ".ckpt":
        run = checkpoint.parent.parent
        if (run / "model" / "config.json").is_file():
            return run / "model"
        raise InputError(f"{checkpoint}: no exported model beside this checkpoint (run 'medalign export {run}')")
    if (checkpoint / "config.json").is_file():
        return checkpoint
    if (checkpoint / "model" / "config.json").is_file():
        return checkpoint / "model"
    raise InputError(f"{checkpoint}: not a run folder or exported model (no model/config.json)")


def load_model(checkpoint: Path, device: str = "auto") -> tuple[DualEncoder, Path]:
    """Load the exported dual encoder for RUN; returns it (eval mode) and its folder."""
    folder = resolve_export(checkpoint)
    return DualEncoder.from_pretrained(folder, map_location=resolve_device(device)), folder
