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
import sys
from pathlib import Path

import numpy as np
import torch

from medalign.config import save_yaml
from medalign.data.augment import build_augmentation
from medalign.data.dataset import StudyDataset
from medalign.data.sampler import ResumableLoader, ResumableSampler
from medalign.errors import InputError
from medalign.io.lock import is_launching_process
from medalign.models import DualEncoder
from medalign.prep.manifest import read_manifest
from medalign.train.config import PretrainConfig, with_loss_needs
from medalign.train.export import DATASET_FILES, EXPORT, export_checkpoint, export_run, keep_dataset_files  # noqa: F401 - export_checkpoint: API
from medalign.train.module import PretrainModule, make_collate, uses_cached_text

log = logging.getLogger(__name__)


def pretrain(
    dataset: Path,
    run: Path,
    config: PretrainConfig,
    progress: bool = True,
    resume: bool = False,
    preset: str | None = None,
    command: list[str] | None = None,
) -> Path | None:
    """Train on the ``train`` split of ``dataset``; returns the exported model folder ``RUN/model``
    (``None`` on ranks other than 0).

    ``trainer.checkpoint_every`` K keeps ``RUN/checkpoints/last.ckpt`` current every K steps; ``resume``
    continues from the newest checkpoint (weights, optimiser, scheduler, step, data position, RNG) up
    to ``trainer.max_steps``. SIGTERM or SIGUSR1 stops the run at the next step with ``last.ckpt``
    written and raises :class:`~medalign.train.preemption.Preempted`. ``RUN/run.json`` records the
    run; ``preset`` is the configuration's name there, ``command`` the command line (default: this process's).
    """
    from lightning.pytorch.callbacks import LearningRateMonitor

    from medalign.devices import resolve_accelerator
    from medalign.train.run_record import dataset_summary, environment
    from medalign.train.runner import configure_cuda_backends, fit_run, quiet_lightning, start_run

    quiet_lightning()
    config = with_loss_needs(config)  # e.g. SigLIP's logit bias: in the saved config, so the export builds the same model
    run = Path(run)
    manifest = read_manifest(dataset)
    train = manifest.subset("train")
    if train.reportless():
        raise InputError(f"{dataset}: {train.reportless()} of {len(train)} training studies have no report; a data set published "
                         "without reports (--layout rad-chestct) is for evaluation (zeroshot --data), and pretrain needs a report per study")
    if len(train) < 2:
        raise InputError(f"{dataset}: {len(train)} training studies; contrastive training needs at least 2")
    if len(train) < config.data.batch_size:
        log.warning("only %d training studies: batch size %d -> %d", len(train), config.data.batch_size, len(train))
        print(f"note: only {len(train)} training studies; batch size lowered from {config.data.batch_size} to {len(train)}", file=sys.stderr)
        config.data.batch_size = len(train)
    t = config.trainer
    accelerator = resolve_accelerator(t.accelerator, "trainer.accelerator")
    start_from = start_run(run, resume, t.seed)
    run.mkdir(parents=True, exist_ok=True)
    if is_launching_process():  # the other ranks find them written
        save_yaml(config, run / "config.yaml")
        keep_dataset_files(dataset, run / DATASET_FILES)
    if t.threads:
        torch.set_num_threads(t.threads)
    model = DualEncoder(config.model)
    on_cuda = accelerator == "gpu"
    if t.channels_last and on_cuda:  # one input channel: the batch is channels-last already, only the weights change
        model.image.to(memory_format=torch.channels_last_3d)
    if t.compile:
        model.image.compile()  # nn.Module.compile: in place, so state_dict keys keep their names
    reports = [text or "" for text in train.columns[config.data.text_field]]
    module = PretrainModule(model, config, report_texts=reports, report_cache=run / "cache" / "report_embeddings.safetensors",
                            finding_prompts=finding_prompts(dataset, train, config.loss.findings.min_positives) if config.loss.findings.weight > 0 else None)
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
    loader = ResumableLoader(dataset_, sampler, num_workers=d.num_workers, collate_fn=collate, persistent_workers=d.num_workers > 0,
                             pin_memory=on_cuda)
    if on_cuda:
        configure_cuda_backends(t.deterministic)

    v = config.validation
    val = manifest.subset("val").studies()  # validated per study (its volumes averaged)
    validates = bool(v.every_n_steps) and len(val) >= 2
    if validates:
        val = val.subset_rows(range(min(len(val), v.max_studies)))
        validation = {"every_n_steps": v.every_n_steps, "studies": len(val)}
    elif v.every_n_steps:
        print(f"note: validation.every_n_steps is set but the dataset has {len(val)} val studies (at least 2 needed): no validation",
              file=sys.stderr)
        validation = {"off": f"the dataset's val split has {len(val)} studies (at least 2 needed)"}
    else:
        validation = {"off": "validation.every_n_steps is not set"}
    def static() -> dict:  # rank 0 only: versions, git, the manifest's hash and counts
        return {"kind": "pretrain", "preset": preset, **environment(), "dataset": dataset_summary(manifest, dataset, config.labels.uncertain),
                "max_steps": t.max_steps, "precision": t.precision, "accelerator": t.accelerator, "validation": validation}

    def validators(history) -> list:
        from medalign.reports.vocabulary import load_vocabulary
        from medalign.train.validation import ZeroShotValidation

        return [ZeroShotValidation(val, load_vocabulary(Path(dataset) / "vocab.yaml"), v.every_n_steps, d.text_field,
                                   uncertain=config.labels.uncertain, history=history)]

    trainer = fit_run(
        run, module, sampler, loader,
        static=static, per_device_batch=d.batch_size, resume_from=start_from,
        resume_command=f"medalign pretrain --data {dataset} --resume {run}", progress=progress, command=command,
        callbacks=[LearningRateMonitor(logging_interval="step")], validation_callbacks=validators if validates else None,
        best_every_n_steps=v.every_n_steps, last_every_n_steps=t.checkpoint_every,
        max_steps=t.max_steps,
        accelerator=accelerator,
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
    if not trainer.is_global_zero:
        return None
    export = run / EXPORT
    notes = export_run(model.cpu(), run, config, export, "checkpoints/last.ckpt", trainer.global_step, Path(dataset))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return export



def finding_prompts(dataset: Path, train, min_positives: int) -> dict[int, tuple[list[str], list[str]]] | None:
    """``{label column: (positive prompts, negative prompts)}`` from the data set's vocabulary, for
    each finding of the manifest ``train`` with at least ``min_positives`` positive reports; None
    (and a note) when no finding has that many."""
    from medalign.reports.vocabulary import load_vocabulary

    vocab = {f.name: f.prompt_pair() for f in load_vocabulary(Path(dataset) / "vocab.yaml").findings}
    positives = (train.labels() == 1).sum(axis=0)
    out = {}
    for k, name in enumerate(train.findings):
        if positives[k] < min_positives:
            continue
        if name not in vocab:
            raise InputError(f"{dataset}/vocab.yaml: no finding '{name}' of the manifest's labels; loss.findings needs its prompts")
        out[k] = (vocab[name].positives, vocab[name].negatives)
    if not out:
        print(f"note: loss.findings is off for this run: no finding has {min_positives} positive training reports "
              f"(loss.findings.min_positives; the most is {int(positives.max(initial=0))})", file=sys.stderr)
        return None
    log.info("finding term on %d findings: %s", len(out), ", ".join(train.findings[k] for k in out))
    return out
