"""A raw study (DICOM folder or NIfTI) prepared exactly as the model's training data was."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from medalign.config import from_dict, read_yaml
from medalign.errors import InputError
from medalign.io.dicom import Volume
from medalign.prep.build import load_study
from medalign.prep.config import PrepConfig
from medalign.prep.transforms import apply_preprocessing, build_preprocessing


@dataclasses.dataclass
class RawStudy:
    """A raw study as the model sees it and as the scanner wrote it."""

    array: np.ndarray  # (X, Y, Z) float32 in [0, 1], the model's grid
    affine: np.ndarray  # (4, 4) voxel-to-RAS-mm of ``array``
    source: Volume  # the study on its own grid (what ``medalign convert`` writes), before preprocessing
    mirrored: bool  # a left eye mirrored to right-eye orientation by the preset (``source`` is not)


def prepare_raw_study(path: Path, model_dir: Path, modality: str | None = None) -> np.ndarray:
    """``(X, Y, Z)`` float32 volume in [0, 1] using ``model_dir/prep_config.yaml``. A DICOM study must
    hold a series of the model's modality; a NIfTI file says none, so ``modality`` must confirm it."""
    return load_raw_study(path, model_dir, modality).array


def load_raw_study(path: Path, model_dir: Path, modality: str | None = None) -> RawStudy:
    """:func:`prepare_raw_study` keeping the geometry: the model-grid array and affine, and the source volume."""
    cfg_path = Path(model_dir) / "prep_config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{model_dir}: exported model has no prep_config.yaml to prepare a raw study with")
    config = from_dict(PrepConfig, read_yaml(cfg_path), where=str(cfg_path))
    volume, provenance = load_study(Path(path), config)
    if provenance == "nifti" and modality != config.modality:
        raise InputError(f"{path}: a NIfTI file carries no modality and the model was trained on {config.modality}: "
                         f"pass --modality {config.modality} to confirm the study is one"
                         + (f" (--modality {modality} given)" if modality else ""))
    array, affine = apply_preprocessing(volume, build_preprocessing(config.steps))
    mirrored = "mirrored" in volume.info
    source = Volume(np.ascontiguousarray(volume.array[::-1]) if mirrored else volume.array, volume.affine, volume.info)
    return RawStudy(array=array, affine=affine, source=source, mirrored=mirrored)
