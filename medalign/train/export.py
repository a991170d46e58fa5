"""Exported models: weights, the data preparation they expect, operating points and a model card.

MODEL/
    model.safetensors, config.json, text/   the dual encoder (``DualEncoder.save_pretrained``)
    prep_config.yaml, vocab.yaml            the training data's preparation and findings
    thresholds.json      per finding the Youden threshold on the validation split (or why none)
    validation.json      per finding AUROC with its bootstrap 95% CI on the validation split
    reference.safetensors  training studies' embeddings and the out-of-distribution threshold (val-calibrated)
    MODEL_CARD.md        intended use, training data, validation, thresholds, limits (Hugging Face's convention)

Everything is written into ``MODEL.tmp`` and renamed into place: an export is whole or absent.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medalign.errors import InputError
from medalign.io.atomic import atomic_write_json
from medalign.io.fingerprint import file_sha256
from medalign.models import DualEncoder
from medalign.prep.manifest import MANIFEST, Manifest, read_manifest
from medalign.train.config import PretrainConfig

EXPORT = "model"
DATASET_FILES = "dataset_files"  # the dataset's prep preset and vocabulary, kept for exports
DATASET_META = ("prep_config.yaml", "vocab.yaml")


def keep_dataset_files(dataset: Path, folder: Path) -> None:
    """Copy the dataset's preprocessing preset and vocabulary into the run (exports need them later)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DATASET_META:
        if (Path(dataset) / name).is_file():
            shutil.copy2(Path(dataset) / name, folder / name)


def export_model(model: DualEncoder, meta: Path, folder: Path, finish: Callable[[Path], None] | None = None) -> None:
    """Save the model with the preprocessing preset and vocabulary found in ``meta`` beside it;
    ``finish(tmp)`` adds more files before the folder is renamed into place (atomically)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in DATASET_META:
        if (Path(meta) / name).is_file():
            shutil.copy2(Path(meta) / name, tmp / name)
    if finish is not None:
        finish(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def write_validation_files(model: DualEncoder, val: Manifest, dataset: Path, folder: Path, uncertain: str = "ignore",
                           n_bootstrap: int = 1000) -> np.ndarray:
    """``folder/thresholds.json`` (each finding's Youden threshold on the validation split, or the reason
    it has none) and ``folder/validation.json`` (AUROC and its bootstrap 95% CI per finding): the
    operating points one-study calls use and the figures the model card quotes. Returns the validation
    studies' embeddings ``(M, D)``."""
    from medalign.metrics import binary_labels, bootstrap_auroc_ci, finding_aurocs, validation_thresholds
    from medalign.models.inference import embed_studies, finding_probabilities
    from medalign.reports.vocabulary import load_vocabulary

    vocab = load_vocabulary(Path(dataset) / "vocab.yaml")
    model.eval()
    with torch.no_grad():
        embeddings = embed_studies(model, val)
        scores = finding_probabilities(model, embeddings, vocab)
    truth = val.truth(vocab.names, uncertain)
    thresholds, notes = validation_thresholds(scores, truth, vocab.names)
    atomic_write_json(folder / "thresholds.json", {
        "source": f"youden on the validation split ({len(val)} studies, labels parsed from reports) at the end of training",
        "thresholds": thresholds, "notes": notes})
    per = {}
    for k, (name, auroc) in enumerate(zip(vocab.names, finding_aurocs(scores, truth))):
        y, s = binary_labels(truth[:, k], scores[:, k])
        per[name] = {"n": int(len(y)), "n_positive": int(y.sum()), "auroc": auroc,
                     "auroc_ci95": list(bootstrap_auroc_ci(y, s, n_bootstrap, seed=k)) if auroc is not None else None,
                     "threshold": thresholds.get(name)}
    evaluated = [v["auroc"] for v in per.values() if v["auroc"] is not None]
    atomic_write_json(folder / "validation.json", {
        "split": "val", "studies": len(val), "dataset_manifest_sha256": file_sha256(Path(dataset) / MANIFEST),
        "uncertain_labels": uncertain, "macro_auroc": float(np.mean(evaluated)) if evaluated else None, "per_finding": per})
    return embeddings


def write_reference_embeddings(model: DualEncoder, dataset: Path, folder: Path, val_embeddings: np.ndarray) -> None:
    """``folder/reference.safetensors``: training-split study embeddings (evenly chosen, at most
    :data:`~medalign.models.reference.MAX_REFERENCE`) and the out-of-distribution threshold calibrated
    on the validation studies (:mod:`medalign.models.reference`)."""
    from medalign.models.inference import embed_studies
    from medalign.models.reference import MAX_REFERENCE, write_reference

    train = read_manifest(dataset).subset("train").studies()
    if len(train) == 0:
        return
    rows = np.unique(np.linspace(0, len(train) - 1, min(len(train), MAX_REFERENCE)).round().astype(int))
    with torch.no_grad():
        embeddings = embed_studies(model, train.subset_rows(rows))
    write_reference(folder, embeddings, val_embeddings)


def export_run(model: DualEncoder, run: Path, config: PretrainConfig, folder: Path, checkpoint: str, step: int,
               dataset: Path | None) -> list[str]:
    """Export ``model`` (trained in ``run`` to ``step``, from ``checkpoint``) into ``folder`` with its
    validation files when ``dataset`` can be read, and ``MODEL_CARD.md``. Returns notes for the user
    (what could not be written, and why)."""
    from medalign.train.model_card import write_model_card
    from medalign.train.run_record import read_run_record

    record = read_run_record(run)
    notes: list[str] = []
    val = _validation_split(dataset, record, config, notes)

    def finish(tmp: Path) -> None:
        if val is not None:
            val_embeddings = write_validation_files(model, val, Path(dataset), tmp, config.labels.uncertain)
            write_reference_embeddings(model, Path(dataset), tmp, val_embeddings)
        write_model_card(tmp, record, config, checkpoint=checkpoint, step=step, notes=notes, name=folder.name)

    export_model(model, run / DATASET_FILES, folder, finish)
    return notes


def _validation_split(dataset: Path | None, record: dict, config: PretrainConfig, notes: list[str]) -> Manifest | None:
    """The validation studies thresholds are fitted on, or ``None`` with the reason in ``notes``."""
    if dataset is None or not (Path(dataset) / MANIFEST).is_file():
        notes.append(f"no thresholds.json or validation figures: the training dataset is not at {dataset} (pass --data DATASET)")
        return None
    expected = record.get("dataset", {}).get("manifest_sha256")
    if expected and file_sha256(Path(dataset) / MANIFEST) != expected:
        notes.append(f"no thresholds.json or validation figures: {dataset} is not the dataset this run trained on (its manifest changed)")
        return None
    val = read_manifest(dataset).subset("val").studies()  # thresholds per study, as zeroshot scores (volumes averaged)
    if len(val) < 2:
        notes.append(f"no thresholds.json or validation figures: the dataset's val split has {len(val)} studies (at least 2 needed)")
        return None
    return val.subset_rows(range(min(len(val), config.validation.max_studies)))


def export_folder(run: Path, which: str = "last", out: Path | None = None) -> Path:
    """Where ``export`` writes: ``out``, else ``RUN/model`` for ``last`` and ``RUN/model_<which>`` otherwise."""
    return Path(out) if out is not None else Path(run) / (EXPORT if which == "last" else f"{EXPORT}_{which}")


def export_checkpoint(run: Path, which: str = "last", out: Path | None = None, dataset: Path | None = None,
                      overwrite: bool = False) -> tuple[Path, list[str]]:
    """Export ``RUN/checkpoints/{which}.ckpt`` as a self-contained model folder (default ``RUN/model``
    for ``last``, ``RUN/model_{which}`` otherwise), with thresholds and validation figures fitted on
    the training dataset's val split (``dataset``, default the one ``run.json`` names) and a model card.
    A folder holding an export is refused unless ``overwrite``. The checkpoint is read with
    ``weights_only=True``. Returns the folder and notes for the user."""
    from medalign.config import load_config
    from medalign.train.checkpointing import AtomicCheckpointIO
    from medalign.train.run_folder import refuse_trained_folder
    from medalign.train.run_record import read_run_record

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise InputError(f"{run}: not a run folder (no config.yaml)")
    ckpt = run / "checkpoints" / f"{which}.ckpt"
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: no such checkpoint{_why_missing(run, which)}")
    config = load_config(PretrainConfig, str(run / "config.yaml"), "pretrain")
    folder = export_folder(run, which, out)
    refuse_trained_folder(folder, "an exported model", None, overwrite)
    checkpoint = AtomicCheckpointIO().load_checkpoint(ckpt, map_location="cpu")  # weights_only, one-line errors
    model = DualEncoder(config.model)
    weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(f"{ckpt}: does not match the run's model ({len(missing)} missing, {len(unexpected)} unexpected weights)")
    if dataset is None:
        recorded = read_run_record(run).get("dataset", {}).get("path")
        dataset = Path(recorded) if recorded else None
    notes = export_run(model, run, config, folder, f"checkpoints/{which}.ckpt", int(checkpoint.get("global_step", 0)), dataset)
    return folder, notes


def _why_missing(run: Path, which: str) -> str:
    """Why ``best.ckpt`` does not exist: validation was off, or the dataset had too few val studies."""
    if which != "best":
        return ""
    from medalign.train.run_record import read_run_record

    validation = read_run_record(run).get("validation", {})
    if validation.get("off"):
        return f": no best checkpoint is chosen without validation ({validation['off']}); export 'last', or train with validation.every_n_steps=K"
    return ": this run had no validation to choose a best checkpoint by (validation.every_n_steps unset, or under 2 val studies); export 'last'"
