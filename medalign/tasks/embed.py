"""Study and report embeddings for a dataset split, computed in batches without gradients."""

from __future__ import annotations

import numpy as np
import torch

from medalign.data.dataset import StudyDataset
from medalign.data.manifest import Manifest
from medalign.models import DualEncoder


@torch.no_grad()
def embed_studies(model: DualEncoder, manifest: Manifest, batch_size: int = 16) -> np.ndarray:
    """``(N, D)`` float32 unit study embeddings, in manifest order."""
    device = model.logit_scale.device
    ds = StudyDataset(manifest)
    out = []
    for i in range(0, len(ds), batch_size):
        images = torch.stack([ds[j]["image"] for j in range(i, min(i + batch_size, len(ds)))]).to(device)
        out.append(model.encode_image(images).float().cpu())
    dim = model.config.embed_dim
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


@torch.no_grad()
def embed_texts(model: DualEncoder, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """``(N, D)`` float32 unit text embeddings."""
    return model.encode_text(list(texts), batch_size=batch_size).float().cpu().numpy()
