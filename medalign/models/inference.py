"""Inference with a dual encoder: study and text embeddings in batches, zero-shot finding scores.

Used by the tasks and by validation during training (which must not import the tasks stage).
"""

from __future__ import annotations

import numpy as np
import torch

from medalign.data.dataset import StudyDataset
from medalign.models.dual import DualEncoder
from medalign.prep.manifest import Manifest
from medalign.reports.vocabulary import Vocabulary


@torch.no_grad()
def embed_studies(model: DualEncoder, manifest: Manifest, batch_size: int = 16, progress: str | None = None) -> np.ndarray:
    """``(N, D)`` float32 unit study embeddings, in manifest order. A :meth:`Manifest.studies` manifest
    lists each study's volumes: their embeddings are averaged (and renormalised), one row per study.
    ``progress``: the command's name, to report progress under (:class:`~medalign.progress.Progress`)."""
    if "volumes" in manifest.columns:
        counts = [len(v) for v in manifest.columns["volumes"]]
        if any(c > 1 for c in counts):
            per_volume = torch.from_numpy(_embed_rows(model, manifest.volumes(), batch_size, progress))
            means = torch.stack([part.mean(0) for part in torch.split(per_volume, counts)])
            return torch.nn.functional.normalize(means, dim=-1).numpy()
    return _embed_rows(model, manifest, batch_size, progress)


def _embed_rows(model: DualEncoder, manifest: Manifest, batch_size: int, progress: str | None = None) -> np.ndarray:
    """``(N, D)``: one embedding per manifest row (its ``volume``)."""
    from medalign.progress import Progress

    device = model.logit_scale.device
    ds = StudyDataset(manifest)
    out = []
    with Progress(progress or "", len(ds), "volumes", enabled=progress is not None and len(ds) > 0) as bar:
        for i in range(0, len(ds), batch_size):
            images = torch.stack([ds[j]["image"] for j in range(i, min(i + batch_size, len(ds)))]).to(device)
            out.append(model.encode_image(images).float().cpu())
            bar.update(min(i + batch_size, len(ds)))
    dim = model.config.embed_dim
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


@torch.no_grad()
def embed_texts(model: DualEncoder, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """``(N, D)`` float32 unit text embeddings."""
    if not texts:
        return np.zeros((0, model.config.embed_dim), np.float32)
    return model.encode_text(list(texts), batch_size=batch_size).float().cpu().numpy()


@torch.no_grad()
def prompt_embeddings(model: DualEncoder, prompts: list[list[str]]) -> torch.Tensor:
    """``(K, D)``: per finding, the renormalised mean embedding of its prompt ensemble."""
    return mean_of_groups(model.encode_text([p for group in prompts for p in group]), [len(g) for g in prompts])


def mean_of_groups(emb: torch.Tensor, group_sizes: list[int]) -> torch.Tensor:
    """``(K, D)``: the renormalised mean of each group of consecutive rows of ``emb`` ``(P, D)`` (a
    finding's prompt ensemble), in order; ``sum(group_sizes) == P``."""
    return torch.nn.functional.normalize(torch.stack([part.mean(0) for part in torch.split(emb, group_sizes)]), dim=-1)


@torch.no_grad()
def finding_probabilities(model: DualEncoder, study_emb: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """``(N, K)``: for each finding, softmax over (positive, negative) prompt similarities × scale;
    prompt ensembles are averaged in embedding space first."""
    pairs = [f.prompt_pair() for f in vocab.findings]
    device = model.logit_scale.device
    pos = prompt_embeddings(model, [p.positives for p in pairs])
    neg = prompt_embeddings(model, [p.negatives for p in pairs])
    img = torch.as_tensor(study_emb, device=device)
    s = model.scale()
    logits = torch.stack([s * img @ pos.T, s * img @ neg.T], dim=-1)  # (N, K, 2)
    return torch.softmax(logits, dim=-1)[..., 0].float().cpu().numpy()
