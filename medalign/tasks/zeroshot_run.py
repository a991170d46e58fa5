"""``medalign zeroshot``: a dataset split to metrics.json, roc.png and scores.csv; or one raw study to JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medalign.prep.manifest import read_manifest
from medalign.errors import InputError
from medalign.metrics import validation_thresholds
from medalign.models.inference import embed_studies
from medalign.reports.vocabulary import Vocabulary, load_vocabulary
from medalign.tasks.model_io import load_model
from medalign.tasks.ood import out_of_distribution
from medalign.tasks.raw_study import embed_raw_study, load_raw_study
from medalign.tasks.zeroshot import (
    evaluate,
    finding_probabilities,
    plot_roc,
    read_label_csv,
    write_metrics,
    write_scores_csv,
)


def resolve_vocabulary(vocab: str | None, model_dir: Path, dataset: Path | None) -> Vocabulary:
    if vocab:
        return load_vocabulary(vocab)
    for folder in (model_dir, dataset):
        if folder is not None and (Path(folder) / "vocab.yaml").is_file():
            return load_vocabulary(Path(folder) / "vocab.yaml")
    return load_vocabulary("chest_ct")


def zeroshot_dataset(checkpoint: Path, dataset: Path, out: Path, vocab: str | None = None, labels: Path | None = None, split: str = "test",
                     device: str = "auto", id_key: bytes | None = None, protocol: str = "medalign") -> dict:
    """Score every finding on ``split`` of ``dataset``; write metrics.json, roc.png, scores.csv under ``out``.
    ``protocol="ct-clip"`` prompts and calls as CT-CLIP's evaluation does (:mod:`medalign.tasks.protocols`):
    its figures go to ``metrics.json["protocol"]`` beside medalign's own, scores.csv holds its scores."""
    model, model_dir = load_model(checkpoint, device, dataset)
    full_manifest = read_manifest(dataset).studies()  # scored per study (its volumes' embeddings averaged)
    manifest = full_manifest.subset(None if split == "all" else split)
    if len(manifest) == 0:
        raise InputError(f"{dataset}: no studies in split '{split}'")
    voc = resolve_vocabulary(vocab, model_dir, dataset)
    if protocol == "ct-clip":
        from medalign.tasks.protocols import ct_clip_vocabulary

        voc = ct_clip_vocabulary(voc)
    elif protocol != "medalign":
        raise InputError(f"--protocol {protocol}: expected medalign or ct-clip")
    ids = manifest.columns["study_id"]
    truth = _ground_truth(manifest, voc, labels, id_key)
    scores = finding_probabilities(model, embed_studies(model, manifest, progress="zeroshot"), voc)
    # operating points (Youden's J) are chosen on the validation split, never on the split evaluated
    # (never on the split being scored: a finding whose validation labels lack a class gets no threshold)
    val = full_manifest.subset("val")
    thresholds: dict[str, float] = {}
    notes: dict[str, str] = {}
    if split in ("val", "all") or len(val) == 0:
        threshold_source = f"none: no validation split apart from the evaluated split '{split}'"
        notes = {name: threshold_source for name in voc.names}
    else:
        val_scores = finding_probabilities(model, embed_studies(model, val, progress="zeroshot (val)"), voc)
        thresholds, notes = validation_thresholds(val_scores, _ground_truth(val, voc, labels, id_key), voc.names)
        threshold_source = "youden on the validation split"
    metrics = evaluate(scores, truth, voc.names, thresholds, threshold_notes=notes)
    metrics.update({
        "split": split, "n_studies": len(manifest), "ground_truth": str(labels) if labels else ("the released labels in the manifest (no reports)" if manifest.reportless()
                                                      else "labels parsed from reports (given labels winning)"),
        "score": "softmax over (positive, negative) prompt", "threshold_source": threshold_source,
    })
    if protocol == "ct-clip":
        from medalign.io.rad_chestct import PROVENANCE
        from medalign.tasks.protocols import ct_clip_metrics, rad_chestct_metrics

        rad = all(str(p).startswith(PROVENANCE) for p in manifest.columns.get("provenance", [""]))  # prep --layout rad-chestct
        metrics["protocol"] = (rad_chestct_metrics if rad else ct_clip_metrics)(scores, truth, voc.names)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out / "metrics.json", metrics)
    plot_roc(scores, truth, voc.names, metrics, out / "roc.png")
    write_scores_csv(out / "scores.csv", ids, scores, voc.names)
    return metrics


def _ground_truth(manifest, voc: Vocabulary, labels: Path | None, id_key: bytes | None = None) -> np.ndarray:
    """``(N, K)`` truth in vocabulary order: the labels CSV, else parsed labels (not mentioned = absent)."""
    ids = manifest.columns["study_id"]
    if labels is not None:
        return read_label_csv(labels, ids, voc.names, id_key)
    return manifest.truth(voc.names)


@torch.no_grad()
def zeroshot_study(checkpoint: Path, study: Path, vocab: str | None = None, device: str = "auto", modality: str | None = None) -> dict:
    """One raw study: ``{"study", "probabilities": {name: p}, "findings": {name: {"score", "threshold",
    "call"}}, "threshold_source"}``; the thresholds are the export's (Youden on the validation split
    at the end of training, ``thresholds.json``); a finding without one gets no call."""
    model, model_dir = load_model(checkpoint, device)
    return score_study(model, model_dir, resolve_vocabulary(vocab, model_dir, None), study, modality)


@torch.no_grad()
def score_study(model, model_dir: Path, voc: Vocabulary, study: Path, modality: str | None = None, raw=None) -> dict:
    """:func:`zeroshot_study` with the model already loaded (``medalign serve`` loads it once); ``raw``:
    the study already read (:func:`~medalign.tasks.raw_study.load_raw_study`), else it is read here."""
    raw = raw if raw is not None else load_raw_study(study, model_dir, modality)
    emb = embed_raw_study(model, raw)[None]
    probs = finding_probabilities(model, emb, voc)[0]
    stored = read_thresholds(model_dir)
    findings = {}
    for name, p in zip(voc.names, probs):
        thr = stored["thresholds"].get(name)
        findings[name] = {"score": round(float(p), 4), "threshold": None if thr is None else round(float(thr), 4),
                          "call": None if thr is None else ("positive" if p >= thr else "negative")}
    guard = out_of_distribution(model_dir, raw.source.affine, raw.source.array.shape, emb[0])
    return {"study": Path(study).name, "out_of_distribution": guard["out_of_distribution"], "ood_reasons": guard["reasons"],
            "probabilities": {n: f["score"] for n, f in findings.items()}, "findings": findings,
            "threshold_source": stored["source"], "volumes": raw.provenance, "ood_checks": {k: guard[k] for k in ("field_of_view", "embedding")}}


def read_thresholds(model_dir: Path) -> dict:
    """The export's ``thresholds.json`` (``{"source", "thresholds", "notes"}``), or an empty set saying why."""
    import json

    path = Path(model_dir) / "thresholds.json"
    if not path.is_file():
        return {"source": "none: this export holds no validation thresholds (trained without a val split, or exported by an older medalign)",
                "thresholds": {}, "notes": {}}
    return json.loads(path.read_text(encoding="utf-8"))
