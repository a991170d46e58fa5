"""Finding the exported model behind ``--checkpoint RUN`` (devices: :mod:`medalign.devices`)."""

from __future__ import annotations

from pathlib import Path


from medalign.devices import resolve_device
from medalign.errors import InputError
from medalign.models import DualEncoder


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


def load_model(checkpoint: Path, device: str = "auto", dataset: Path | None = None) -> tuple[DualEncoder, Path]:
    """Load the exported dual encoder for RUN; returns it (eval mode) and its folder. With
    ``dataset``, a dataset prepared otherwise than the model's training data is refused first."""
    folder = resolve_export(checkpoint)
    if dataset is not None:
        require_same_preparation(folder, Path(dataset))
    return DualEncoder.from_pretrained(folder, map_location=resolve_device(device)), folder


#: the parts of a prep preset that change what a volume looks like to the model
_PREPARATION_KEYS = ("modality", "steps", "cache_dtype", "mirror_left_eyes")


def require_same_preparation(model_dir: Path, dataset: Path) -> None:
    """:class:`InputError` naming both when ``dataset`` was prepared with other steps (spacing,
    window, size, modality) than the data ``model_dir`` was trained on (its ``prep_config.yaml``)."""
    from medalign.config import read_yaml

    mine, theirs = Path(model_dir) / "prep_config.yaml", Path(dataset) / "prep_config.yaml"
    if not (mine.is_file() and theirs.is_file()):
        return  # an export or dataset from before this check: nothing to compare
    a, b = read_yaml(mine), read_yaml(theirs)
    for key in _PREPARATION_KEYS:
        if key == "steps":
            for i, (sa, sb) in enumerate(zip(a.get("steps", []), b.get("steps", []))):
                if sa != sb:
                    raise InputError(f"{dataset}: prepared otherwise than the model {model_dir} was trained on (step {i + 1}: "
                                     f"dataset {_step(sb)}, model {_step(sa)}); prepare it with --config {mine}")
            if len(a.get("steps", [])) != len(b.get("steps", [])):
                raise InputError(f"{dataset}: prepared with {len(b.get('steps', []))} steps, the model's data with "
                                 f"{len(a.get('steps', []))}; prepare it with --config {mine}")
        elif a.get(key) != b.get(key):
            raise InputError(f"{dataset}: prepared otherwise than the model {model_dir} was trained on ({key}: dataset "
                             f"{b.get(key)!r}, model {a.get(key)!r}); prepare it with --config {mine}")


def _step(step: dict) -> str:
    name, options = next(iter(step.items()))
    return f"{name} {options}"
