"""Validation during training: zero-shot macro AUROC and report->study Recall@5 on the val split.

Runs every ``validation.every_n_steps`` optimizer steps, batched, in the training precision, each
rank embedding its shard of the split; every rank then scores the gathered whole (the values agree,
so the best-checkpoint callback sees the same metric everywhere) and logs ``val/macro_auroc`` and
``val/report_to_study_r5``; the best checkpoint by AUROC is kept beside ``last.ckpt``.
"""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import torch

from medalign.losses.distributed import gather_sharded_rows, shard_rows
from medalign.metrics import macro_auroc, paired_recall_at_k
from medalign.models.inference import embed_studies, embed_texts, finding_probabilities
from medalign.prep.manifest import Manifest
from medalign.reports.vocabulary import Vocabulary

log = logging.getLogger(__name__)


def _autocast(device: torch.device, precision: str):
    """The autocast context of Lightning's ``precision`` (``bf16-mixed``, ``16-mixed``; none for 32 and 64)."""
    if precision.startswith("bf16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


class ValidationHistory(L.Callback):
    """Every validation of a fit as ``{"step": N, "val/...": value}``, in order: those medalign's
    callbacks run (:meth:`add`) and those of Lightning's validation loop (a job counted in epochs).
    Progress lines and ``run.json`` read it."""

    def __init__(self) -> None:
        self.entries: list[dict[str, float]] = []

    def add(self, step: int, metrics: dict[str, float]) -> None:
        self.entries.append({"step": int(step), **{k: float(v) for k, v in metrics.items()}})

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            self.add(trainer.global_step, metrics)


class ZeroShotValidation(L.Callback):
    """Logs ``val/macro_auroc`` and ``val/report_to_study_r5`` every ``every_n_steps`` steps (and at the
    last), and adds them to ``history``."""

    def __init__(self, manifest: Manifest, vocab: Vocabulary, every_n_steps: int, text_field: str = "report",
                 uncertain: str = "ignore", history: ValidationHistory | None = None) -> None:
        self.history = history
        self.manifest = manifest
        self.vocab = vocab
        self.every_n_steps = every_n_steps
        self.reports = [t or "" for t in manifest.columns[text_field]]
        self.truth = manifest.truth(vocab.names, uncertain)
        self._last_step = -1

    @torch.no_grad()
    def evaluate(self, model, precision: str = "32-true") -> dict[str, float]:
        """The two validation metrics for ``model`` (a :class:`DualEncoder`) as it is now, in the
        training ``precision`` (Lightning's string). Each rank embeds its shard of the studies and
        reports (:func:`shard_rows`), in batches; the shards are gathered, so every rank scores the
        whole split and logs the same values."""
        was_training = model.training
        model.eval()
        n = len(self.manifest)
        rows = shard_rows(n)
        device = model.logit_scale.device
        try:
            with _autocast(device, precision):
                local_studies = embed_studies(model, self.manifest.subset_rows(rows))
                local_reports = embed_texts(model, [self.reports[i] for i in rows])
            studies = gather_sharded_rows(torch.from_numpy(local_studies).to(device), n).cpu().numpy()
            reports = gather_sharded_rows(torch.from_numpy(local_reports).to(device), n).cpu().numpy()
            scores = finding_probabilities(model, studies, self.vocab)
        finally:
            model.train(was_training)
        return {"val/macro_auroc": macro_auroc(scores, self.truth), "val/report_to_study_r5": paired_recall_at_k(reports, studies, (5,))["recall@5"]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step or not (step % self.every_n_steps == 0 or step >= trainer.max_steps):
            return
        self._last_step = step
        metrics = self.evaluate(pl_module.model, str(trainer.precision))
        # straight to the loggers (one row per validation, at the step's index as Lightning numbers
        # training rows) and to callback_metrics, where the best-checkpoint callback looks
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step - 1)
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if self.history is not None:
            self.history.add(step, metrics)
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
