"""``medalign finetune``: the image encoder plus a linear head, trained end to end on finding labels.

Multi-label BCE with class-balanced positive weights, AdamW with warm-up and cosine decay,
Lightning for the loop (the pretraining's precision and devices), the best epoch by validation
macro AUROC kept. ``from_scratch`` starts the same encoder from random weights: the supervised
baseline a pretrained encoder has to beat.

OUT/
    metrics.json          test AUROC per finding and macro, the epoch chosen, the settings
    classifier.safetensors    encoder + head weights; classifier.json: names, encoder config
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medalign.data.augment import build_augmentation
from medalign.data.dataset import StudyDataset, as_unit_float
from medalign.data.manifest import read_manifest
from medalign.errors import InputError
from medalign.io.atomic import atomic_write, atomic_write_json
from medalign.models.image import ImageEncoder
from medalign.prep.vocab import load_vocabulary
from medalign.tasks.model_io import load_model, resolve_device
from medalign.metrics import finding_aurocs, known_rows, macro_auroc


class FindingClassifier(nn.Module):
    """``(B, 1, X, Y, Z) -> (B, K)`` logits: an image encoder's pooled features and a linear head."""

    def __init__(self, encoder: ImageEncoder, n_findings: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, n_findings)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = as_unit_float(images)  # uint8 or float16 cache -> float32 in [0, 1]
        return self.head(self.encoder.backbone(x).flatten(1))


def _targets(manifest, names: list[str], labels: Path | None) -> np.ndarray:
    from medalign.tasks.zeroshot import read_label_csv

    return read_label_csv(labels, manifest.columns["study_id"], names) if labels else manifest.truth(names)


@torch.no_grad()
def _predict(model: FindingClassifier, dataset: StudyDataset, device: torch.device, batch: int = 16) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(dataset), batch):
        images = torch.stack([dataset[j]["image"] for j in range(i, min(i + batch, len(dataset)))]).to(device)
        out.append(torch.sigmoid(model(images)).float().cpu())
    return torch.cat(out).numpy()


def finetune(checkpoint: Path, dataset: Path, out: Path, labels: Path | None = None, epochs: int = 5, batch_size: int = 16,
             lr: float = 3e-4, from_scratch: bool = False, device: str = "auto", seed: int = 0) -> dict:
    """Train encoder + head on the train split, choose the epoch on val, report test AUROC."""
    dev = resolve_device(device)
    model_dual, model_dir = load_model(checkpoint, "cpu")
    vocab_file = Path(model_dir) / "vocab.yaml"
    manifest = read_manifest(dataset)
    names = load_vocabulary(vocab_file).names if vocab_file.is_file() else manifest.findings
    splits = {s: manifest.subset(s) for s in ("train", "val", "test")}
    if len(splits["train"]) < 2 or len(splits["test"]) < 2:
        raise InputError(f"{dataset}: fine-tuning needs train and test splits (have {len(splits['train'])} and {len(splits['test'])})")
    y = {s: _targets(m, names, labels) for s, m in splits.items()}
    # findings that both classes represent in train and test; uncertain (-1) and unknown (NaN) are masked
    usable = [k for k in range(len(names)) if all(0 < np.sum(y[s][:, k] == 1) < np.sum(known_rows(y[s][:, k])) for s in ("train", "test"))]
    if not usable:
        raise InputError(f"{dataset}: no finding has positive and negative studies in both train and test")
    names = [names[k] for k in usable]
    y = {s: v[:, usable] for s, v in y.items()}

    torch.manual_seed(seed)
    cfg = model_dual.config.image
    encoder = ImageEncoder(cfg.name, model_dual.config.embed_dim, cfg.options, cfg.activation_checkpointing)
    if not from_scratch:
        encoder.load_state_dict(model_dual.image.state_dict())
    model = FindingClassifier(encoder, len(names)).to(dev)
    train_y = torch.from_numpy(np.nan_to_num(y["train"], nan=-1.0))
    known = train_y >= 0
    positives = ((train_y == 1) & known).sum(0).float()
    pos_weight = ((known.sum(0).float() - positives) / positives.clamp(min=1)).clamp(max=50).to(dev)  # class-balanced
    spatial = np.load(splits["train"].volume_path(0), mmap_mode="r").shape
    train_ds = StudyDataset(splits["train"], augment=build_augmentation([0], 0.05, 0.9, spatial), seed=seed)
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(range(len(train_ds)), batch_size=min(batch_size, len(train_ds)), shuffle=True, drop_last=True, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    total = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    eval_val = StudyDataset(splits["val"]) if len(splits["val"]) >= 2 else None
    best = (-1.0, None, -1)
    draw = 0
    for epoch in range(epochs):
        model.train()
        for rows in loader:
            items = [train_ds[(int(i), draw + n)] for n, i in enumerate(rows)]
            draw += len(items)
            images = torch.stack([it["image"] for it in items]).to(dev)
            target = train_y[rows].to(dev)
            mask = (target >= 0).float()
            loss = (loss_fn(model(images), target.clamp(min=0)) * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        score = macro_auroc(_predict(model, eval_val, dev), y["val"]) if eval_val is not None else float(epoch)
        if not score <= best[0]:  # NaN (no usable val finding) keeps the latest
            best = (score, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, epoch)
    model.load_state_dict(best[1])
    probs = _predict(model, StudyDataset(splits["test"]), dev)
    per = dict(zip(names, finding_aurocs(probs, y["test"])))
    result = {"macro_auroc": float(np.mean(list(per.values()))), "per_finding": per, "epoch_chosen": best[2], "epochs": epochs,
              "from_scratch": from_scratch, "encoder": cfg.name, "n_train": len(splits["train"]), "n_test": len(splits["test"]),
              "ground_truth": str(labels) if labels else "labels parsed from reports"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "classifier.safetensors", lambda p: save_file(state, str(p)))
    atomic_write_json(out / "classifier.json", {"findings": names, "image": {"name": cfg.name, "options": cfg.options}})
    atomic_write_json(out / "metrics.json", result)
    return result
