"""The LightningModule: one dual encoder, one contrastive objective, AdamW + warm-up/cosine."""

from __future__ import annotations

import time
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F

from medalign.data.augment import jitter_intensity
from medalign.losses.findings import finding_bce, prompt_logits
from medalign.losses.registry import loss_entry
from medalign.models import DualEncoder
from medalign.models.inference import mean_of_groups
from medalign.train.config import PretrainConfig
from medalign.train.schedule import warmup_cosine


def needs_report_embeddings(config: PretrainConfig) -> bool:
    """Whether training uses the frozen pretrained tower's report embeddings (see :mod:`report_cache`)."""
    return uses_similarity_targets(config) or uses_cached_text(config)


def uses_similarity_targets(config: PretrainConfig) -> bool:
    """CWCL targets, alone (``cwcl``) or beside the label targets (``soft_labels`` + ``with_similarity``)."""
    return loss_entry(config.loss.name).uses_report_embeddings(config.loss.with_similarity)


def uses_cached_text(config: PretrainConfig) -> bool:
    """A frozen tower on whole reports gives the same pooled vector every step: look it up instead."""
    return config.model.text.trainable_layers == 0 and config.data.sentence_sampling == 0


class PretrainModule(L.LightningModule):
    """Trains ``model`` on batches ``{"image", "tokens", "labels", "index"}`` from :func:`make_collate`.

    ``report_texts`` (the training split's texts, by dataset index) are embedded once by the frozen
    pretrained text tower when :func:`needs_report_embeddings`; ``report_cache`` is where they are kept.
    ``finding_prompts``: ``{label column: (positive prompts, negative prompts)}``, the findings the
    finding term learns (``loss.findings``; :mod:`medalign.losses.findings`).
    """

    def __init__(self, model: DualEncoder, config: PretrainConfig, report_texts: list[str] | None = None, report_cache=None,
                 finding_prompts: dict[int, tuple[list[str], list[str]]] | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        entry = loss_entry(config.loss.name)
        self.objective = entry.create(config.loss.mix, config.loss.local_loss, config.loss.gather_with_grad)
        # decided once from the registry entry, not looked up every step
        self._needs_labels = entry.needs_labels
        self._similarity_targets = uses_similarity_targets(config)
        self._cached_text = uses_cached_text(config)
        self.report_texts = report_texts if needs_report_embeddings(config) else None
        self.report_cache = report_cache
        # a plain attribute, not a buffer: DDP would broadcast a buffer every step
        self.report_embeddings: torch.Tensor | None = None
        self._last_step_time: tuple[float | None, int] | None = None  # (time, global step) where the next rate starts
        findings = config.loss.findings
        self.finding_weight = findings.weight if finding_prompts else 0.0
        self.finding_head: torch.nn.Linear | None = None
        self._prompt_tokens: dict[str, torch.Tensor] | None = None
        if findings.weight > 0 and finding_prompts:  # None: no finding has enough positives (pretrain says so)
            self._finding_columns = sorted(finding_prompts)
            pairs = [finding_prompts[k] for k in self._finding_columns]
            self._finding_forms = ("head", "prompts") if findings.via == "both" else (findings.via,)
            if "head" in self._finding_forms:
                self.finding_head = torch.nn.Linear(config.model.embed_dim, len(pairs))
            if "prompts" in self._finding_forms:  # every prompt tokenised once: positives of all findings, then negatives
                self._prompt_tokens = model.text.tokenize([p for pos, _ in pairs for p in pos] + [p for _, neg in pairs for p in neg])
                self._prompt_groups = [len(pos) for pos, _ in pairs] + [len(neg) for _, neg in pairs]

    def on_fit_start(self) -> None:
        if self.report_texts is not None and self.report_embeddings is None:
            from medalign.train.report_cache import load_or_embed_reports

            emb = load_or_embed_reports(self.report_cache, self.model.text, self.report_texts, self.config.model.text.model, self.trainer.is_global_zero)
            self.report_embeddings = emb.to(self.device)

    def on_train_start(self) -> None:
        # Lightning keeps each submodule's mode; transformers loads the text tower in eval mode (no dropout)
        self.model.train()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        if "intensity_jitter" in batch:  # data.intensity_on: device
            images = jitter_intensity(images, batch["intensity_jitter"])  # uint8 -> unit float and jitter in one pass
        img = self.model.encode_image(images)
        if self._cached_text:
            pooled = self.report_embeddings[batch["index"]]
        elif self.model.text.frozen:
            with torch.no_grad():
                pooled = self.model.text.pooled(**batch["tokens"])
        else:
            pooled = self.model.text.pooled(**batch["tokens"])
        txt = F.normalize(self.model.text.proj(pooled), dim=-1)
        similarity_source = self.report_embeddings[batch["index"]] if self._similarity_targets else None
        labels = batch["labels"] if self._needs_labels else None
        loss = self.objective(img, txt, self.model.scale(), self.model.logit_bias, labels, similarity_source)
        bsz = batch["image"].shape[0]
        if self.finding_weight > 0:
            targets = batch["labels"][:, self._finding_columns]
            finding_loss = sum(finding_bce(self.finding_logits(img, form), targets) for form in self._finding_forms)
            self.log("train/contrastive_loss", loss.detach(), batch_size=bsz)
            self.log("train/finding_loss", finding_loss.detach(), batch_size=bsz)
            loss = loss + self.finding_weight * finding_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        self._log_throughput(bsz)
        self.log("train/logit_scale", self.model.scale().detach(), batch_size=bsz)
        return loss

    def finding_logits(self, img: torch.Tensor, form: str | None = None) -> torch.Tensor:
        """``(B, K)`` logits of the term's K findings for unit image embeddings ``img`` ``(B, D)``: zero-shot's pair logit
        from the prompts as the text tower embeds them now (``form="prompts"``), or the linear head on the same scale
        (``"head"``); ``None``: the configured form (``via: both`` has two, so it must be named)."""
        if form is None:
            if len(self._finding_forms) > 1:
                raise ValueError("loss.findings.via: both has two forms of logits: name one ('head' or 'prompts')")
            form = self._finding_forms[0]
        if form == "head":
            # at the contrast's logit scale (14 at the start), as the prompt logit is: unscaled, its pull on the encoder was that much weaker
            return self.model.scale().detach() * self.finding_head(img)
        if self._prompt_tokens["input_ids"].device != img.device:  # moved once, not every step
            self._prompt_tokens = {k: v.to(img.device) for k, v in self._prompt_tokens.items()}
        prompts = mean_of_groups(self.model.encode_tokens(self._prompt_tokens), self._prompt_groups)
        pos, neg = prompts.chunk(2)
        return prompt_logits(img, pos, neg, self.model.scale())

    def _log_throughput(self, bsz: int) -> None:
        """``train/volumes_per_s``: whole steps (data, forward, backward, optimizer), all ranks, averaged
        since the last logged step. Logged only on the steps Lightning writes: a Python number logged
        is copied to the GPU, which waits for the queued work, and the CPU stops running ahead."""
        if self._trainer is None:  # a step called by hand (tests, benchmarks): nothing to log to
            return
        now, step = time.perf_counter(), self.trainer.global_step
        if self._last_step_time is None:  # the first step (start-up, cuDNN autotuning) runs until the next call
            self._last_step_time = (None, step)
            return
        since, first = self._last_step_time
        if since is None:
            self._last_step_time = (now, step)
            return
        if (step + 1) % max(1, self.trainer.log_every_n_steps) and not self.trainer.should_stop:
            return
        if step > first:
            self.log("train/volumes_per_s", bsz * self.trainer.world_size * (step - first) / (now - since), prog_bar=True, batch_size=bsz)
        self._last_step_time = (now, step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.model.clamp_logit_scale()  # after the optimizer step (open_clip clamps the parameter, not exp())

    def configure_optimizers(self):
        o = self.config.optim
        groups = [{"params": params, "lr": lr, "weight_decay": wd} for params, lr, wd in parameter_groups(self.model, o)]
        if self.finding_head is not None:
            groups.append({"params": list(self.finding_head.parameters()), "lr": o.lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups)
        total = max(1, self.config.trainer.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, warmup_steps=o.warmup_steps, total_steps=total, min_ratio=o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def parameter_groups(model: torch.nn.Module, o) -> list[tuple[list[torch.nn.Parameter], float, float]]:
    """``[(params, lr, weight_decay)]`` as open_clip groups them: weight decay only on weight
    matrices and kernels (ndim >= 2); biases, norm weights, ``logit_scale`` and ``logit_bias`` get
    none. The text transformer trains at ``text_lr``, the rest at ``lr``."""
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and "logit_" not in name
        buckets.setdefault((name.startswith("text.model."), decay), []).append(p)
    return [(params, o.text_lr if text else o.lr, o.weight_decay if decay else 0.0)
            for (text, decay), params in sorted(buckets.items()) if params]


def make_collate(tokenizer=None, max_length: int = 128, tokens=None):
    """Collate study items into a batch. The text side: whole reports from ``tokens`` (a
    :class:`ReportTokens` cache, tokenised once per run), sentence samples tokenised here by the
    Hugging Face ``tokenizer`` (in the loader's workers); without ``tokens`` every text is tokenised
    per batch. ``tokenizer=None``: no tokens (the report embedding cache gives the text side)."""
    from medalign.data.tokens import pad_token_ids

    def collate(items: list[dict]) -> dict:
        batch = {
            "image": torch.stack([it["image"] for it in items]),
            "labels": torch.stack([it["labels"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
        if "intensity_jitter" in items[0]:
            batch["intensity_jitter"] = torch.stack([it["intensity_jitter"] for it in items])
        if tokenizer is not None and tokens is None:
            batch["tokens"] = dict(tokenizer([it["text"] for it in items], padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        elif tokenizer is not None:
            fresh = [it["text"] for it in items if not it["text_is_report"]]
            fresh_ids = iter(tokenizer(fresh, truncation=True, max_length=max_length)["input_ids"] if fresh else [])
            seqs = [tokens.ids(it["index"]) if it["text_is_report"] else next(fresh_ids) for it in items]
            batch["tokens"] = pad_token_ids(seqs, int(tokenizer.pad_token_id or 0), tokenizer.padding_side)
        return batch

    return collate
