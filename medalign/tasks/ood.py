"""Is a new study like the ones the model was trained on? The out-of-distribution guard of
``zeroshot --study`` and ``retrieve --study``.

Two checks, each with its reason:
- **field of view**: the study's extent in mm along each axis of the model's input (after the
  preset's reorientation) against the preset's crop (``spatial_size`` x ``pixdim``); a study that
  leaves more than :data:`MAX_PADDING_SHARE` of the input as padding (a slab, a different body part
  scanned on a smaller field) is outside what the model saw;
- **embedding**: its ``k``-nearest-neighbour cosine distance to the export's training studies against
  the threshold calibrated on the validation studies (:mod:`medalign.models.reference`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medalign.config import from_dict, read_yaml
from medalign.models.reference import knn_distance, read_reference
from medalign.prep.config import PrepConfig

#: more of the model's input than this being padding is a field of view the training data did not have
MAX_PADDING_SHARE = 0.5


def crop_extent_mm(config: PrepConfig) -> np.ndarray | None:
    """``(3,)`` the physical extent of the model's input, ``spatial_size * pixdim`` (None without both steps)."""
    size = pixdim = None
    for step in config.steps:
        name, args = next(iter(step.items()))
        if name == "spacing":
            pixdim = np.asarray(args["pixdim"], dtype=float)
        elif name in ("crop_or_pad", "resize"):
            size = np.asarray(args["spatial_size"], dtype=float)
    return size * pixdim if size is not None and pixdim is not None else None


def study_extent_mm(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(3,)`` extent in mm along the world (RAS) axes of a volume's box (voxel centres, one voxel added)."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], dtype=float)
    world = corners @ affine[:3, :3].T
    return world.max(0) - world.min(0) + np.abs(affine[:3, :3]).sum(axis=1)  # centres' span plus one voxel's reach


def field_of_view(source_affine: np.ndarray, source_shape: tuple[int, ...], config: PrepConfig) -> dict:
    """The field-of-view check: extents, the share of the model's input left as padding, and a reason
    when that share exceeds :data:`MAX_PADDING_SHARE`."""
    crop = crop_extent_mm(config)
    extent = study_extent_mm(source_affine, source_shape)
    if crop is None:
        return {"checked": False, "reason": "the preset fixes no physical input size (no spacing and crop steps)"}
    covered = np.minimum(1.0, extent / crop)
    padding = float(1.0 - np.prod(covered))
    out = {"checked": True, "study_extent_mm": [round(float(v), 1) for v in extent], "model_input_mm": [round(float(v), 1) for v in crop],
           "padding_share": round(padding, 3), "out_of_distribution": padding > MAX_PADDING_SHARE}
    if out["out_of_distribution"]:
        out["reason"] = (f"field of view: the study covers {' x '.join(f'{v:.0f}' for v in extent)} mm of the model's "
                         f"{' x '.join(f'{v:.0f}' for v in crop)} mm input, leaving {padding:.0%} of it as padding "
                         f"(more than {MAX_PADDING_SHARE:.0%})")
    return out


def embedding_check(model_dir: Path, embedding: np.ndarray) -> dict:
    """The embedding check against the export's reference set (or why it could not run)."""
    reference = read_reference(model_dir)
    if reference is None:
        return {"checked": False, "reason": "the export holds no reference embeddings (exported without its dataset, or by an older "
                                            "medalign): re-export with medalign export RUN --data DATASET"}
    embeddings, calibration = reference
    distance = float(knn_distance(embeddings, torch.from_numpy(np.asarray(embedding, np.float32))[None], calibration["k"])[0])
    out = {"checked": True, "knn_distance": round(distance, 4), "threshold": round(calibration["threshold"], 4), "k": calibration["k"],
           "calibration": f"{calibration['percentile']:g}th percentile of {calibration['n_validation']} validation studies",
           "out_of_distribution": distance > calibration["threshold"]}
    if out["out_of_distribution"]:
        out["reason"] = (f"embedding: its {calibration['k']}-NN cosine distance to the training studies is {distance:.3f}, above the "
                         f"{calibration['percentile']:g}th percentile of the validation studies ({calibration['threshold']:.3f})")
    return out


def out_of_distribution(model_dir: Path, source_affine: np.ndarray, source_shape: tuple[int, ...], embedding: np.ndarray) -> dict:
    """``{"out_of_distribution": bool, "reasons": [...], "field_of_view": {...}, "embedding": {...}}``."""
    config = from_dict(PrepConfig, read_yaml(Path(model_dir) / "prep_config.yaml"), where=str(Path(model_dir) / "prep_config.yaml"))
    fov = field_of_view(source_affine, source_shape, config)
    emb = embedding_check(model_dir, embedding)
    reasons = [c["reason"] for c in (fov, emb) if c.get("out_of_distribution")]
    return {"out_of_distribution": bool(reasons), "reasons": reasons, "field_of_view": fov, "embedding": emb}
