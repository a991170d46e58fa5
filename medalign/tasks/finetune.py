"""``medalign finetune``: the image encoder plus a linear head, trained end to end on finding labels.

Lightning owns the loop, as in pretraining: any accelerator and device count (DDP across GPUs
and nodes), bf16-mixed precision on GPU, gradient clipping, atomic checkpoints and an exact
``--resume``. Multi-label BCE with class-balanced positive weights (uncertain and unknown labels
masked), AdamW with warm-up and cosine decay, validation macro AUROC after every epoch with the
best epoch kept. ``from_scratch`` starts the same encoder from random weights: the supervised
baseline a pretrained encoder has to beat. Training samples volumes; validation and test score
studies: a study with several volumes (``series.select: all``) gets the mean of their logits, which
for a linear head is the head applied to the mean of their features (as embeddings are averaged).

OUT/
    metrics.json              test AUROC per finding and macro, the epoch chosen, the settings
    classifier.safetensors    encoder + head weights; classifier.json: names, encoder config
    checkpoints/last.ckpt, best.ckpt    Lightning checkpoints (resume; best by val macro AUROC)
    logs/metrics.csv, tensorboard/      training loss and validation AUROC per epoch
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medalign.data.augment import build_augmentation
from medalign.data.dataset import StudyDataset, as_unit_float
from medalign.data.sampler import ResumableLoader, ResumableSampler, ShardSampler
from medalign.config import to_dict
from medalign.devices import resolve_accelerator, torch_device_of
from medalign.errors import InputError
from medalign.io.atomic import atomic_write, atomic_write_json
from medalign.metrics import finding_aurocs, has_both_classes, macro_auroc
from medalign.models.image import ImageEncoder
from medalign.prep.manifest import read_manifest
from medalign.reports.vocabulary import load_vocabulary
from medalign.tasks.model_io import load_model
from medalign.train.config import FinetuneConfig
from medalign.train.runner import fit_run, quiet_lightning, start_run
from medalign.train.schedule import warmup_cosine


class FindingClassifier(nn.Module):
    """``(B, 1, X, Y, Z) -> (B, K)`` logits: an image encoder's pooled features and a linear head."""

    def __init__(self, encoder: ImageEncoder, n_findings: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, n_findings)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = as_unit_float(images)  # uint8 or float16 cache -> float32 in [0, 1]
        return self.head(self.encoder.backbone(x).flatten(1))


class LabelledStudies(Dataset):
    """``{"image": (1, X, Y, Z), "target": (K,), "index": int}``: a study and its finding labels
    (1/0, and -1 where uncertain or unknown: masked in the loss)."""

    def __init__(self, studies: StudyDataset, targets: np.ndarray) -> None:
        self.studies = studies
        self.targets = torch.from_numpy(np.nan_to_num(targets, nan=-1.0).astype(np.float32))

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        item = self.studies[key]
        return {"image": item["image"], "target": self.targets[item["index"]], "index": item["index"]}


def masked_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE ``(B, K)`` averaged over the known labels (target >= 0) only."""
    mask = (target >= 0).to(logits.dtype)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target.clamp(min=0).to(logits.dtype), pos_weight=pos_weight, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def study_means(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` per-volume rows -> ``(S, K)`` per-study means, studies numbered ``0 .. S - 1`` by ``groups`` ``(N,)``."""
    n_studies = int(groups.max()) + 1 if len(groups) else 0
    sums = torch.zeros(n_studies, values.shape[1], dtype=values.dtype).index_add_(0, groups, values)
    counts = torch.bincount(groups, minlength=n_studies).clamp(min=1).to(values.dtype)
    return sums / counts[:, None]


class FinetuneModule(L.LightningModule):
    """Encoder + head under Lightning; logs ``train/loss`` per step and ``val/macro_auroc`` per epoch
    (computed on the whole val split gathered from every rank, one score per study)."""

    def __init__(self, classifier: FindingClassifier, pos_weight: torch.Tensor, lr: float, total_steps: int, weight_decay: float = 0.01,
                 val_groups: np.ndarray | None = None, warmup_steps: int | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("pos_weight", pos_weight)
        self.lr, self.total_steps, self.weight_decay = lr, total_steps, weight_decay
        self.warmup_steps = warmup_steps if warmup_steps is not None else max(1, total_steps // 10)
        #: study number of each val row; a study's volumes are averaged before scoring
        self.val_groups = None if val_groups is None else torch.from_numpy(val_groups)
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = masked_bce(self.classifier(batch["image"]), batch["target"], self.pos_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.classifier(batch["image"]).float()
        self._val.append((batch["index"], logits, batch["target"]))

    def on_validation_epoch_end(self) -> None:
        index, logits, target = (torch.cat(parts) for parts in zip(*self._val)) if self._val else (None, None, None)
        self._val.clear()
        index, logits, target = _gather_rows(self, index, logits, target)
        if self.val_groups is not None:
            groups = self.val_groups[index]
            logits, target = study_means(logits, groups), study_means(target, groups)  # a study's rows share its target
        score = macro_auroc(torch.sigmoid(logits).numpy(), target.numpy())
        # every rank computed the same number from the same gathered rows: no further reduction
        self.log("val/macro_auroc", float(score) if np.isfinite(score) else -1.0, prog_bar=True, sync_dist=False)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = partial(warmup_cosine, warmup_steps=self.warmup_steps, total_steps=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}}


def _gather_rows(module: L.LightningModule, index, probs, target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's validation rows, in dataset order: ``(N,), (N, K), (N, K)`` on the CPU."""
    if module.trainer.world_size == 1:
        order = torch.argsort(index)
        return index[order].cpu(), probs[order].cpu(), target[order].cpu()
    # ranks hold different row counts: pad to the largest (index -1), gather, drop the padding
    k = module.classifier.head.out_features
    n = torch.tensor([0 if index is None else len(index)], device=module.device)
    most = int(module.all_gather(n).max())
    pad_index = torch.full((most,), -1, dtype=torch.long, device=module.device)
    pad_probs = torch.zeros(most, k, device=module.device)
    pad_target = torch.full((most, k), -1.0, device=module.device)
    if index is not None:
        pad_index[: len(index)], pad_probs[: len(index)], pad_target[: len(index)] = index, probs, target
    gathered = [module.all_gather(t).flatten(0, 1).cpu() for t in (pad_index, pad_probs, pad_target)]
    keep = gathered[0] >= 0
    index, probs, target = (g[keep] for g in gathered)
    order = torch.argsort(index)
    return index[order], probs[order], target[order]


def _targets(manifest, names: list[str], labels: Path | None, id_key: bytes | None = None) -> np.ndarray:
    from medalign.tasks.zeroshot import read_label_csv

    return read_label_csv(labels, manifest.columns["study_id"], names, id_key) if labels else manifest.truth(names)


@torch.no_grad()
def predict_studies(model: FindingClassifier, manifest, device: torch.device, batch: int = 16) -> np.ndarray:
    """``(S, K)`` probabilities, one row per study of ``manifest`` (order of first appearance): the
    sigmoid of the mean logit over the study's volumes."""
    model.eval()
    dataset = StudyDataset(manifest)
    out = []
    for i in range(0, len(dataset), batch):
        images = torch.stack([dataset[j]["image"] for j in range(i, min(i + batch, len(dataset)))]).to(device)
        out.append(model(images).float().cpu())
    logits = study_means(torch.cat(out), torch.from_numpy(manifest.study_index()))
    return torch.sigmoid(logits).numpy()


def finetune(checkpoint: Path, dataset: Path, out: Path, config: FinetuneConfig | None = None, labels: Path | None = None,
             from_scratch: bool = False, resume: bool = False, progress: bool = False, train_rows: np.ndarray | None = None,
             command: list[str] | None = None, id_key: bytes | None = None) -> dict | None:
    """Train encoder + head on the train split (``config``: ``configs/finetune/default.yaml`` when
    None; its ``batch_size`` per device), keep the epoch with the best val macro AUROC, report test
    AUROC. Returns the metrics (``None`` on ranks other than 0). ``train_rows``: only these rows of
    the train split (a label fraction, as :mod:`medalign.tasks.probe` draws it)."""
    from medalign.config import load_config

    config = config or load_config(FinetuneConfig, "default", "finetune")
    quiet_lightning()
    tc = config.trainer
    accelerator = resolve_accelerator(tc.accelerator, "--device")
    precision = ("bf16-mixed" if accelerator == "gpu" else "32-true") if tc.precision == "auto" else tc.precision
    out = Path(out)
    start_from = start_run(out, resume, config.seed)
    model_dual, model_dir = load_model(checkpoint, "cpu", dataset)
    vocab_file = Path(model_dir) / "vocab.yaml"
    manifest = read_manifest(dataset)
    names = load_vocabulary(vocab_file).names if vocab_file.is_file() else manifest.findings
    splits = {s: manifest.subset(s) for s in ("train", "val", "test")}
    if train_rows is not None:
        splits["train"] = splits["train"].subset_rows(train_rows)
    if len(splits["train"]) < 2 or len(splits["test"].studies()) < 2:
        raise InputError(f"{dataset}: fine-tuning needs train and test splits (have {len(splits['train'])} and {len(splits['test'])})")
    # targets per volume row for training, per study for validation and test
    y = {s: _targets(m if s == "train" else m.studies(), names, labels, id_key) for s, m in splits.items()}
    # findings that both classes represent in train and test; uncertain (-1) and unknown (NaN) are masked
    usable = [k for k in range(len(names)) if has_both_classes(y["train"][:, k]) and has_both_classes(y["test"][:, k])]
    if not usable:
        raise InputError(f"{dataset}: no finding has positive and negative studies in both train and test")
    names = [names[k] for k in usable]
    y = {s: v[:, usable] for s, v in y.items()}

    cfg = model_dual.config.image
    encoder = ImageEncoder(cfg.name, model_dual.config.embed_dim, cfg.options, cfg.activation_checkpointing)
    if not from_scratch:
        encoder.load_state_dict(model_dual.image.state_dict())
    classifier = FindingClassifier(encoder, len(names))
    encoder.proj.requires_grad_(False)  # the contrastive projection is not on the classifier's path (DDP needs every trainable weight used)
    world = tc.devices * tc.num_nodes
    per_device = min(config.batch_size, len(splits["train"]) // world)
    if per_device < 1:
        raise InputError(f"{dataset}: {len(splits['train'])} training studies cannot fill a batch on each of {world} devices")
    spatial = np.load(splits["train"].volume_path(0), mmap_mode="r").shape
    aug = config.augment
    train_ds = LabelledStudies(StudyDataset(splits["train"], augment=build_augmentation(aug.flip_axes, aug.intensity, aug.crop_scale, spatial),
                                            seed=config.seed), y["train"])
    known = train_ds.targets >= 0
    positives = (train_ds.targets == 1).sum(0).float()
    pos_weight = ((known.sum(0).float() - positives) / positives.clamp(min=1)).clamp(max=config.max_pos_weight)  # class-balanced
    sampler = ResumableSampler(len(train_ds), per_device, seed=config.seed)
    workers = config.num_workers
    train_loader = ResumableLoader(train_ds, sampler, num_workers=workers, persistent_workers=workers > 0)
    # validation only scores findings both classes represent in val; without any, the last epoch is kept
    has_val = len(y["val"]) >= 2 and any(has_both_classes(y["val"][:, k]) for k in range(len(names)))
    val_loader = None
    val_groups = splits["val"].study_index()
    if has_val:
        val_ds = LabelledStudies(StudyDataset(splits["val"]), y["val"][val_groups])
        val_loader = DataLoader(val_ds, batch_size=per_device, sampler=ShardSampler(len(val_ds)), num_workers=workers)

    from medalign.train.checkpointing import AtomicCheckpointIO
    from medalign.train.run_record import dataset_summary, environment

    steps_per_epoch = len(train_ds) // (per_device * world)
    total = max(1, config.epochs * steps_per_epoch)
    module = FinetuneModule(classifier, pos_weight, config.lr, total_steps=total, weight_decay=config.weight_decay, val_groups=val_groups,
                            warmup_steps=max(1, int(config.warmup_fraction * total + 1e-9)))
    def static() -> dict:  # rank 0 only: versions, git, the manifest's hash and counts
        return {"kind": "finetune", "checkpoint": str(checkpoint), "from_scratch": from_scratch, **environment(),
                "dataset": dataset_summary(manifest, dataset, "ignore"), "config": to_dict(config),
                "findings": names, "epochs": config.epochs, "lr": config.lr, "precision": precision, "accelerator": accelerator,
                "labels": str(labels) if labels else "labels parsed from reports",
                "validation": {"every": "epoch", "studies": len(y["val"])} if has_val else {"off": "no finding has both classes in val"}}

    trainer = fit_run(
        out, module, sampler, train_loader, val_loader,
        static=static, per_device_batch=per_device, resume_from=start_from, resume_command=f"medalign finetune ... --out {out} --resume",
        progress=progress, command=command,
        max_epochs=config.epochs,
        accelerator=accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        precision=precision,
        gradient_clip_val=config.gradient_clip_val,
        log_every_n_steps=max(1, min(10, steps_per_epoch)),
        num_sanity_val_steps=0,
    )
    if not trainer.is_global_zero:
        return None

    chosen = out / "checkpoints" / ("best.ckpt" if has_val else "last.ckpt")
    ckpt = AtomicCheckpointIO().load_checkpoint(chosen, map_location="cpu")
    module.load_state_dict(ckpt["state_dict"])
    model = module.classifier.float()
    dev = torch_device_of(accelerator)
    probs = predict_studies(model.to(dev), splits["test"], dev)
    per = dict(zip(names, finding_aurocs(probs, y["test"])))
    result = {"macro_auroc": float(np.mean(list(per.values()))), "per_finding": per, "epoch_chosen": int(ckpt["epoch"]), "epochs": config.epochs,
              "from_scratch": from_scratch, "encoder": cfg.name,
              "n_train": len(splits["train"].studies()), "n_train_volumes": len(splits["train"]), "n_test": len(y["test"]),
              "n_test_volumes": len(splits["test"]),
              "precision": precision, "devices": world, "batch_size_per_device": per_device,
              "train_rows": None if train_rows is None else [int(r) for r in train_rows],
              "ground_truth": str(labels) if labels else "labels parsed from reports"}
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "classifier.safetensors", lambda p: save_file(state, str(p)))
    atomic_write_json(out / "classifier.json", {"findings": names, "image": {"name": cfg.name, "options": cfg.options}})
    atomic_write_json(out / "metrics.json", result)
    return result
