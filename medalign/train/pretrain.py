"""``medalign pretrain``: a run folder with config, logs, checkpoints and the exported model.

RUN/
    config.yaml          the merged configuration
    logs/metrics.csv     training loss, logit scale, validation metrics (CSV)
    tensorboard/         the same for TensorBoard (``tensorboard --logdir RUN/tensorboard``)
    checkpoints/last.ckpt, best.ckpt (best val macro AUROC, when validation runs)
    cache/report_embeddings.safetensors   frozen text tower's report embeddings (CWCL targets, frozen text)
    cache/tokens-<key>/  every training report tokenised once (memory-mapped by the loader)
    dataset_files/       the dataset's prep_config.yaml and vocab.yaml
    model/               exported dual encoder (safetensors + config + tokenizer + prep preset + vocab);
                         ``medalign export RUN [--checkpoint best]`` writes it from a checkpoint
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from medalign.config import save_yaml
from medalign.data.augment import build_augmentation
from medalign.data.dataset import StudyDataset
from medalign.data.manifest import read_manifest
from medalign.data.sampler import ResumableLoader, ResumableSampler
from medalign.errors import ConfigError, InputError
from medalign.models import DualEncoder
from medalign.train.config import PretrainConfig
from medalign.train.module import PretrainModule, make_collate, uses_cached_text

log = logging.getLogger(__name__)
EXPORT = "model"
DATASET_FILES = "dataset_files"  # the dataset's prep preset and vocabulary, kept for exports
DATASET_META = ("prep_config.yaml", "vocab.yaml")


def pretrain(
    dataset: Path,
    run: Path,
    config: PretrainConfig,
    progress: bool = True,
    resume: bool = False,
) -> Path | None:
    """Train on the ``train`` split of ``dataset``; returns the exported model folder ``RUN/model``
    (``None`` on ranks other than 0).

    ``trainer.checkpoint_every`` K keeps ``RUN/checkpoints/last.ckpt`` current every K steps; ``resume``
    continues from it (weights, optimiser, scheduler, step, data position, RNG) up to ``trainer.max_steps``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medalign.train.checkpointing import LastCheckpoint
    from medalign.train.runner import configure_cuda_backends, fit, make_trainer, quiet_lightning
    from medalign.train.state import TrainingStateCallback

    quiet_lightning()
    run = Path(run)
    manifest = read_manifest(dataset)
    train = manifest.subset("train")
    if len(train) < 2:
        raise InputError(f"{dataset}: {len(train)} training studies; contrastive training needs at least 2")
    if len(train) < config.data.batch_size:
        log.warning("only %d training studies: batch size %d -> %d", len(train), config.data.batch_size, len(train))
        print(f"note: only {len(train)} training studies; batch size lowered from {config.data.batch_size} to {len(train)}", file=sys.stderr)
        config.data.batch_size = len(train)
    last = run / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise InputError(f"{run}: nothing to resume (no checkpoints/last.ckpt)")
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(config, run / "config.yaml")
    _keep_dataset_files(dataset, run / DATASET_FILES)
    t = config.trainer
    if t.threads:
        torch.set_num_threads(t.threads)
    L.seed_everything(t.seed, workers=True, verbose=False)
    model = DualEncoder(config.model)
    if t.compile:
        model.image.compile()  # nn.Module.compile: in place, so state_dict keys keep their names
    reports = [text or "" for text in train.columns[config.data.text_field]]
    module = PretrainModule(model, config, report_texts=reports, report_cache=run / "cache" / "report_embeddings.safetensors")
    d = config.data
    spatial_size = np.load(train.volume_path(0), mmap_mode="r").shape
    on_device = d.intensity_on == "device"
    augment = build_augmentation(d.flip_axes, 0.0 if on_device else d.intensity, d.crop_scale, spatial_size)
    dataset_ = StudyDataset(train, augment=augment, text_field=d.text_field, sentence_sampling=d.sentence_sampling, seed=t.seed,
                            device_intensity=d.intensity if on_device else 0.0, uncertain=config.labels.uncertain)
    sampler = ResumableSampler(len(train), d.batch_size, seed=t.seed)
    if uses_cached_text(config):
        collate = make_collate()  # the text side is the report embedding cache
    else:
        from medalign.data.tokens import build_token_cache

        # every report tokenised once (each rank builds or reuses the same keyed folder)
        tokens = build_token_cache(run / "cache", reports, model.text.token_ids, f"{config.model.text.model}:{len(model.text.tokenizer)}",
                                   model.text.max_length)
        collate = make_collate(model.text.tokenizer, model.text.max_length, tokens)
    on_cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    loader = ResumableLoader(dataset_, sampler, num_workers=d.num_workers, collate_fn=collate, persistent_workers=d.num_workers > 0,
                             pin_memory=on_cuda)
    if on_cuda:
        configure_cuda_backends(t.deterministic)
    callbacks = [TrainingStateCallback(sampler)]
    v = config.validation
    val = manifest.subset("val").studies()  # validated per study (its volumes averaged)
    if v.every_n_steps and len(val) >= 2:
        from medalign.prep.vocab import load_vocabulary
        from medalign.train.validation import ZeroShotValidation

        val = val.subset_rows(range(min(len(val), v.max_studies)))
        callbacks.append(ZeroShotValidation(val, load_vocabulary(Path(dataset) / "vocab.yaml"), v.every_n_steps, d.text_field,
                                            uncertain=config.labels.uncertain))
        callbacks.append(ModelCheckpoint(dirpath=str(run / "checkpoints"), filename="best", monitor="val/macro_auroc", mode="max",
                                         save_top_k=1, every_n_train_steps=v.every_n_steps, enable_version_counter=False))
    elif v.every_n_steps:
        log.warning("validation.every_n_steps is set but the dataset has fewer than 2 val studies: no validation")
    callbacks.append(LastCheckpoint(run / "checkpoints", every_n_train_steps=t.checkpoint_every))
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator: '{t.accelerator}' but no CUDA GPU is visible here; override with trainer.accelerator=cpu (or auto)")
    trainer = make_trainer(
        run,
        callbacks,
        progress,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        sync_batchnorm=t.sync_batchnorm,
    )
    fit(trainer, module, loader, resume_from=last if resume else None)
    if not trainer.is_global_zero:
        return None
    export = run / EXPORT
    export_model(model.cpu(), run / DATASET_FILES, export)
    val = manifest.subset("val").studies()  # thresholds per study, as zeroshot scores (volumes averaged)
    if len(val) >= 2:  # operating points for one-study calls (zeroshot --study), fitted on validation only
        write_validation_thresholds(model, val.subset_rows(range(min(len(val), v.max_studies))), Path(dataset), export,
                                    config.labels.uncertain)
    return export


def write_validation_thresholds(model: DualEncoder, val, dataset: Path, export: Path, uncertain: str = "ignore") -> None:
    """``export/thresholds.json``: each finding's Youden threshold on the validation split (none,
    with the reason, where its validation labels lack a class)."""
    from medalign.io.atomic import atomic_write_json
    from medalign.metrics import validation_thresholds
    from medalign.models.inference import embed_studies, finding_probabilities
    from medalign.prep.vocab import load_vocabulary

    vocab = load_vocabulary(dataset / "vocab.yaml")
    model.eval()
    with torch.no_grad():
        scores = finding_probabilities(model, embed_studies(model, val), vocab)
    thresholds, notes = validation_thresholds(scores, val.truth(vocab.names, uncertain), vocab.names)
    atomic_write_json(export / "thresholds.json", {
        "source": f"youden on the validation split ({len(val)} studies, labels parsed from reports) at the end of training",
        "thresholds": thresholds, "notes": notes})


def _keep_dataset_files(dataset: Path, folder: Path) -> None:
    """Copy the dataset's preprocessing preset and vocabulary into the run (exports need them later)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in DATASET_META:
        if (Path(dataset) / name).is_file():
            shutil.copy2(Path(dataset) / name, folder / name)


def export_model(model: DualEncoder, meta: Path, folder: Path) -> None:
    """Save the model with the preprocessing preset and vocabulary found in ``meta`` beside it (atomically)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in DATASET_META:
        if (Path(meta) / name).is_file():
            shutil.copy2(Path(meta) / name, tmp / name)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def export_checkpoint(run: Path, which: str = "last", out: Path | None = None) -> Path:
    """Export ``RUN/checkpoints/{which}.ckpt`` as a self-contained model folder (default ``RUN/model``
    for ``last``, ``RUN/model_{which}`` otherwise). The checkpoint is read with ``weights_only=True``."""
    from medalign.config import load_config

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise InputError(f"{run}: not a run folder (no config.yaml)")
    ckpt = run / "checkpoints" / f"{which}.ckpt"
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: no such checkpoint")
    config = load_config(PretrainConfig, str(run / "config.yaml"), "pretrain")
    from medalign.train.checkpointing import AtomicCheckpointIO

    state = AtomicCheckpointIO().load_checkpoint(ckpt, map_location="cpu")["state_dict"]  # weights_only, one-line errors
    model = DualEncoder(config.model)
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(f"{ckpt}: does not match the run's model ({len(missing)} missing, {len(unexpected)} unexpected weights)")
    folder = Path(out) if out is not None else run / (EXPORT if which == "last" else f"{EXPORT}_{which}")
    export_model(model, run / DATASET_FILES, folder)
    return folder
