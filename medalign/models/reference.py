"""An export's reference embeddings: where its training studies lie, for the out-of-distribution guard.

``MODEL/reference.safetensors`` holds up to :data:`MAX_REFERENCE` training-split study embeddings
(float16) and, in its metadata, the calibration: the ``k``-nearest-neighbour cosine distance of each
validation study to them, and its ``percentile``-th value as the threshold. A new study farther from
the training studies than that reads as out of the training distribution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

REFERENCE = "reference.safetensors"
MAX_REFERENCE = 5000
K = 5
PERCENTILE = 99.0


def knn_distance(reference: torch.Tensor, queries: torch.Tensor, k: int = K) -> torch.Tensor:
    """``(N, D)`` and ``(M, D)`` unit vectors -> ``(M,)``: the mean cosine distance (1 - cosine) of each
    query to its ``k`` nearest reference vectors."""
    sims = queries.float() @ reference.float().T
    top = sims.topk(min(k, reference.shape[0]), dim=1).values
    return 1.0 - top.mean(dim=1)


def write_reference(folder: Path, train: np.ndarray, val: np.ndarray, k: int = K, percentile: float = PERCENTILE) -> dict:
    """Save ``train`` ``(N, D)`` (evenly thinned to :data:`MAX_REFERENCE` rows) with the threshold
    calibrated on ``val`` ``(M, D)``; returns the calibration."""
    from safetensors.torch import save_file

    from medalign.io.atomic import atomic_write

    rows = np.linspace(0, len(train) - 1, min(len(train), MAX_REFERENCE)).round().astype(int)
    reference = torch.from_numpy(np.ascontiguousarray(train[rows])).float()
    distances = knn_distance(reference, torch.from_numpy(val).float(), k).numpy()
    calibration = {"k": k, "percentile": percentile, "threshold": float(np.percentile(distances, percentile)),
                   "n_reference": len(rows), "n_validation": len(val), "validation_median": float(np.median(distances))}
    tensors = {"embeddings": reference.half().contiguous()}
    atomic_write(Path(folder) / REFERENCE, lambda p: save_file(tensors, str(p), metadata={"calibration": json.dumps(calibration)}))
    return calibration


def read_reference(folder: Path) -> tuple[torch.Tensor, dict] | None:
    """``(embeddings (N, D) float32, calibration)`` of an export, or ``None`` when it has none."""
    from safetensors import safe_open

    path = Path(folder) / REFERENCE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("embeddings").float(), json.loads(f.metadata()["calibration"])
