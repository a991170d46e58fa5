"""A raw study (DICOM folder or NIfTI) prepared exactly as the model's training data was, and its embedding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from medalign.config import from_dict, read_yaml
from medalign.errors import InputError
from medalign.io.volume import Volume
from medalign.prep.studies import load_study_volumes
from medalign.prep.config import PrepConfig
from medalign.prep.transforms import apply_preprocessing, build_preprocessing


@dataclasses.dataclass
class RawStudy:
    """A raw study as the model sees it and as the scanner wrote it."""

    array: np.ndarray  # (X, Y, Z) float32 in [0, 1], the model's grid
    affine: np.ndarray  # (4, 4) voxel-to-RAS-mm of ``array``
    source: Volume  # the study on its own grid (what ``medalign convert`` writes), before preprocessing
    mirrored: bool  # a left eye mirrored to right-eye orientation by the preset (``source`` is not)
    #: the model-grid arrays of every volume the preset takes (``series.select: all``: each reconstruction,
    #: best first; ``array`` is the first) and how each was chosen
    arrays: list[np.ndarray] = dataclasses.field(default_factory=list)
    provenance: list[str] = dataclasses.field(default_factory=list)


def load_raw_study(path: Path, model_dir: Path, modality: str | None = None) -> RawStudy:
    """A raw study prepared exactly as the model's training data was (``model_dir/prep_config.yaml``),
    keeping the geometry of its first volume. A DICOM study must hold a series of the model's
    modality; a file that names none (NIfTI) needs ``modality`` to confirm it."""
    cfg_path = Path(model_dir) / "prep_config.yaml"
    if not cfg_path.is_file():
        raise InputError(f"{model_dir}: exported model has no prep_config.yaml to prepare a raw study with")
    config = from_dict(PrepConfig, read_yaml(cfg_path), where=str(cfg_path))
    loaded = load_study_volumes(Path(path), config)
    if not loaded[0][0].modality and modality != config.modality:
        raise InputError(f"{path}: a {loaded[0][0].source or 'image'} file carries no modality and the model was trained on {config.modality}: "
                         f"pass --modality {config.modality} to confirm the study is one"
                         + (f" (--modality {modality} given)" if modality else ""))
    pipeline = build_preprocessing(config.steps)
    prepared = [apply_preprocessing(volume, pipeline) for volume, _ in loaded]
    volume = loaded[0][0]
    mirrored = bool(volume.mirrored)
    source = dataclasses.replace(volume, array=np.ascontiguousarray(volume.array[::-1]), mirrored="") if mirrored else volume
    return RawStudy(array=prepared[0][0], affine=prepared[0][1], source=source, mirrored=mirrored,
                    arrays=[a for a, _ in prepared], provenance=[p for _, p in loaded])


@torch.no_grad()
def embed_raw_study(model, raw: RawStudy) -> np.ndarray:
    """``(D,)`` unit embedding of a raw study: its volumes' embeddings averaged and renormalised, as
    evaluation does for a prepared study (:func:`~medalign.models.inference.embed_studies`)."""
    device = model.logit_scale.device
    emb = torch.cat([model.encode_image(torch.from_numpy(a)[None, None].to(device)).float() for a in raw.arrays])
    return torch.nn.functional.normalize(emb.mean(0), dim=0).cpu().numpy()
