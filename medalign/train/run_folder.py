"""What a training output folder holds, and the rule that a trained run is never overwritten.

A command that trains into a folder (``pretrain --out``, ``finetune --out``) or exports into one
(``export --out``) first asks :func:`refuse_trained_folder`: a folder that holds checkpoints or an
exported model is refused (exit 2, one line naming the step it holds and the ways on) unless the
user said ``--overwrite``; nothing in it is touched. ``--resume`` continues from
:func:`resume_checkpoint`: the newest of ``checkpoints/last.ckpt`` and Lightning's SLURM
``hpc_ckpt_<n>.ckpt`` files.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from medalign.errors import InputError

#: what a run folder may hold that a new run would overwrite (files and folders), relative to it
RUN_OUTPUTS = ("checkpoints", "model", "logs", "tensorboard", "run.json", "config.yaml", "dataset_files",
               "classifier.safetensors", "classifier.json", "metrics.json")
_HPC = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


class RunExistsError(InputError):
    """The output folder holds a trained run (exit 2)."""


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step a Lightning checkpoint was saved at (``None`` if unreadable); memory-mapped,
    with ``weights_only`` (nothing in the file is executed)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a cut or foreign file: its step is unknown, the refusal still stands
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if step is not None else None


def checkpoints(folder: Path) -> list[Path]:
    """The checkpoints a run folder holds: ``checkpoints/*.ckpt`` and ``hpc_ckpt_<n>.ckpt``."""
    folder = Path(folder)
    found = sorted((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    return found + sorted(p for p in folder.glob("hpc_ckpt_*.ckpt") if _HPC.fullmatch(p.name))


def resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint ``--resume`` continues from: ``checkpoints/last.ckpt``, or a newer SLURM
    ``hpc_ckpt_<n>.ckpt`` (Lightning's requeue save) when one holds a later step."""
    folder = Path(folder)
    last = folder / "checkpoints" / "last.ckpt"
    candidates = [p for p in [last] if p.is_file()] + [p for p in checkpoints(folder) if _HPC.fullmatch(p.name)]
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    steps = {p: checkpoint_step(p) for p in candidates}
    return max(candidates, key=lambda p: (steps[p] if steps[p] is not None else -1, p == last))


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an exported model (a dual encoder or a fine-tuned classifier)."""
    folder = Path(folder)
    return (folder / "model.safetensors").is_file() or (folder / "config.json").is_file() or (folder / "classifier.safetensors").is_file()


def describe_trained(folder: Path) -> str | None:
    """What trained artefact ``folder`` holds, in words (``checkpoints/last.ckpt at step 6 and an
    exported model``); ``None`` when it holds none."""
    folder = Path(folder)
    held = []
    newest = resume_checkpoint(folder)
    if newest is not None:
        step = checkpoint_step(newest)
        held.append(f"{newest.relative_to(folder)} at step {step if step is not None else '?'}")
    elif checkpoints(folder):
        held.append(str(checkpoints(folder)[0].relative_to(folder)))
    exports = [p for p in [folder, *sorted(folder.glob("model*"))] if p.is_dir() and is_export(p)]
    if exports:
        held.append("an exported model" + ("" if exports == [folder] else f" ({', '.join(str(p.relative_to(folder)) + '/' for p in exports if p != folder)})"))
    return " and ".join(held) if held else None


def refuse_trained_folder(folder: Path, what: str, resume_hint: str | None, overwrite: bool = False) -> None:
    """Stop (:class:`RunExistsError`) when ``folder`` holds a trained run or export, naming it and the
    ways on: ``resume_hint`` (``--resume RUN``), a new folder, or ``--overwrite`` (then this passes,
    and the caller replaces what is there: :func:`clear_run`)."""
    folder = Path(folder)
    if overwrite or not folder.is_dir():
        return
    held = describe_trained(folder)
    if held is None:
        return
    ways = [f"continue it with {resume_hint}"] if resume_hint else []
    ways += ["write to a new folder", "or pass --overwrite to replace it"]
    detail = "" if held == "an exported model" else f" ({held})"
    raise RunExistsError(f"{folder}: already holds {what}{detail}; nothing was changed: {', '.join(ways)}")


def clear_run(folder: Path) -> None:
    """Remove an earlier run's checkpoints, exports, logs and records from ``folder`` (``--overwrite``;
    caches stay: they are keyed by their contents)."""
    folder = Path(folder)
    for p in [folder / name for name in RUN_OUTPUTS] + list(folder.glob("model_*")) + list(folder.glob("hpc_ckpt_*.ckpt")) \
            + list(folder.glob("MODEL_CARD.md")) + list(folder.glob("thresholds.json")):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
