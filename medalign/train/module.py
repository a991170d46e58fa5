"""The LightningModule: one dual encoder, one contrastive objective, AdamW + warm-up/cosine."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F

from medalign.losses import ContrastiveObjective
from medalign.models import DualEncoder
from medalign.train.config import PretrainConfig


class PretrainModule(L.LightningModule):
    """Trains ``model`` on batches ``{"image", "tokens", "labels"}`` from :func:`make_collate`."""

    def __init__(self, model: DualEncoder, config: PretrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.objective = ContrastiveObjective(config.loss.name, config.loss.mix)

    def on_train_start(self) -> None:
        # Lightning keeps each submodule's mode; transformers loads the text tower in eval mode (no dropout)
        self.model.train()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        img = self.model.encode_image(batch["image"])
        pooled = self.model.text.pooled(**batch["tokens"])  # one text-tower pass serves both uses below
        txt = F.normalize(self.model.text.proj(pooled), dim=-1)
        similarity_source = None
        if self.config.loss.name == "cwcl" or (self.config.loss.name == "soft_labels" and self.model.text.frozen):
            # report embeddings for similarity targets, without gradient (the pretrained tower when it is frozen)
            similarity_source = pooled.detach()
        loss = self.objective(img, txt, self.model.scale(), self.model.logit_bias, batch["labels"], similarity_source)
        bsz = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        self.log("train/logit_scale", self.model.scale().detach(), batch_size=bsz)
        return loss

    def configure_optimizers(self):
        o = self.config.optim
        text_params = [p for n, p in self.model.named_parameters() if n.startswith("text.model.") and p.requires_grad]
        other = [p for n, p in self.model.named_parameters() if not n.startswith("text.model.") and p.requires_grad]
        groups = [{"params": other, "lr": o.lr}]
        if text_params:
            groups.append({"params": text_params, "lr": o.text_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=o.weight_decay)
        total = max(1, self.config.trainer.max_steps)

        def schedule(step: int) -> float:
            if step < o.warmup_steps:
                return (step + 1) / max(1, o.warmup_steps)
            progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def make_collate(tokenizer_fn):
    """Collate study items into a batch, tokenising the texts once per batch (in the loader)."""

    def collate(items: list[dict]) -> dict:
        return {
            "image": torch.stack([it["image"] for it in items]),
            "tokens": tokenizer_fn([it["text"] for it in items]),
            "labels": torch.stack([it["labels"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }

    return collate
