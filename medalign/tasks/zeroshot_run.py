"""``medalign zeroshot``: a dataset split to metrics.json, roc.png and scores.csv; or one raw study to JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medalign.data.manifest import read_manifest
from medalign.errors import InputError
from medalign.metrics import binary_labels
from medalign.models.inference import embed_studies
from medalign.prep.vocab import Vocabulary, load_vocabulary
from medalign.tasks.model_io import load_model
from medalign.tasks.raw_study import prepare_raw_study
from medalign.tasks.zeroshot import (
    evaluate,
    finding_probabilities,
    plot_roc,
    read_label_csv,
    write_metrics,
    write_scores_csv,
    youden_threshold,
)


def _vocabulary(vocab: str | None, model_dir: Path, dataset: Path | None) -> Vocabulary:
    if vocab:
        return load_vocabulary(vocab)
    for folder in (model_dir, dataset):
        if folder is not None and (Path(folder) / "vocab.yaml").is_file():
            return load_vocabulary(Path(folder) / "vocab.yaml")
    return load_vocabulary("chest_ct")


def zeroshot_dataset(checkpoint: Path, dataset: Path, out: Path, vocab: str | None = None, labels: Path | None = None, split: str = "test", device: str = "auto") -> dict:
    """Score every finding on ``split`` of ``dataset``; write metrics.json, roc.png, scores.csv under ``out``."""
    model, model_dir = load_model(checkpoint, device, dataset)
    full_manifest = read_manifest(dataset)
    manifest = full_manifest.subset(None if split == "all" else split)
    if len(manifest) == 0:
        raise InputError(f"{dataset}: no studies in split '{split}'")
    voc = _vocabulary(vocab, model_dir, dataset)
    ids = manifest.columns["study_id"]
    truth = _ground_truth(manifest, voc, labels)
    scores = finding_probabilities(model, embed_studies(model, manifest), voc)
    # operating points (Youden's J) are chosen on the validation split, never on the split evaluated
    # (never on the split being scored: a finding whose validation labels lack a class gets no threshold)
    val = full_manifest.subset("val")
    thresholds: dict[str, float] = {}
    notes: dict[str, str] = {}
    if split in ("val", "all") or len(val) == 0:
        threshold_source = f"none: no validation split apart from the evaluated split '{split}'"
        notes = {name: threshold_source for name in voc.names}
    else:
        val_scores = finding_probabilities(model, embed_studies(model, val), voc)
        val_truth = _ground_truth(val, voc, labels)
        for k, name in enumerate(voc.names):
            y, s = binary_labels(val_truth[:, k], val_scores[:, k])
            if 0 < y.sum() < len(y):
                thresholds[name] = youden_threshold(y, s)
            else:
                notes[name] = f"the validation split has {'no positive' if y.sum() == 0 else 'no negative'} for this finding: no threshold"
        threshold_source = "youden on the validation split"
    metrics = evaluate(scores, truth, voc.names, thresholds, threshold_notes=notes)
    metrics.update({
        "split": split, "n_studies": len(manifest), "ground_truth": str(labels) if labels else "labels parsed from reports",
        "score": "softmax over (positive, negative) prompt", "threshold_source": threshold_source,
    })
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out / "metrics.json", metrics)
    plot_roc(scores, truth, voc.names, metrics, out / "roc.png")
    write_scores_csv(out / "scores.csv", ids, scores, voc.names)
    return metrics


def _ground_truth(manifest, voc: Vocabulary, labels: Path | None) -> np.ndarray:
    """``(N, K)`` truth in vocabulary order: the labels CSV, else parsed labels (not mentioned = absent)."""
    ids = manifest.columns["study_id"]
    if labels is not None:
        return read_label_csv(labels, ids, voc.names)
    return manifest.truth(voc.names)


@torch.no_grad()
def zeroshot_study(checkpoint: Path, study: Path, vocab: str | None = None, device: str = "auto") -> dict:
    """Per-finding probabilities for one raw study: ``{"study", "probabilities": {name: p}}``."""
    model, model_dir = load_model(checkpoint, device)
    voc = _vocabulary(vocab, model_dir, None)
    volume = prepare_raw_study(study, model_dir)
    image = torch.from_numpy(volume)[None, None].to(model.logit_scale.device)
    emb = model.encode_image(image).float().cpu().numpy()
    probs = finding_probabilities(model, emb, voc)[0]
    return {"study": Path(study).name, "probabilities": {n: round(float(p), 4) for n, p in zip(voc.names, probs)}}
