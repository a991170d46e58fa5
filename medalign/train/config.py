"""The pretraining configuration (``configs/pretrain/*.yaml``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from medalign.errors import ConfigError
from medalign.models.config import ModelConfig


@dataclasses.dataclass
class FindingTermConfig:
    """A study-level finding term beside the contrastive loss (:mod:`medalign.losses.findings`):
    binary cross-entropy of each study's report-derived finding labels, ``weight`` times."""

    #: 0: off (the contrastive loss alone)
    weight: float = 0.0
    #: prompts: zero-shot's own pair logit, both towers learn it; head: a linear head on the image embedding;
    #: both: the two terms summed (the head teaches the image tower, the prompts tie the text to it)
    via: Literal["prompts", "head", "both"] = "prompts"
    #: a finding enters the term once the training split has this many positive reports of it (a finding
    #: never seen present would only be taught "absent", whatever the study shows)
    min_positives: int = 10


@dataclasses.dataclass
class LossConfig:
    """Which objective; ``mix`` blends soft targets with the identity (0: plain InfoNCE targets)."""

    #: a registered loss (:func:`medalign.losses.registry.list_losses`: info_nce, siglip, soft_labels, cwcl, ...)
    name: str = "soft_labels"
    mix: float = 0.5
    #: soft_labels only: average the label targets with CWCL similarity targets from the frozen text tower
    with_similarity: bool = False
    #: multi-GPU: each rank forms only its own rows of the global-batch logits (open_clip's local_loss):
    #: (b x B) instead of (B x B) per rank, the same gradient; the logged train loss is then rank 0's rows
    local_loss: bool = False
    #: false: other ranks' features enter the loss as constants (open_clip's option; no backward
    #: all-reduce, but the towers' gradient is 1/W of the exact one: see docs/scaling.md)
    gather_with_grad: bool = True
    #: the study-level finding term (off by default)
    findings: FindingTermConfig = dataclasses.field(default_factory=FindingTermConfig)


@dataclasses.dataclass
class LabelsConfig:
    """What an uncertain finding label (-1: "cannot be excluded", "possible") means: in the soft
    targets (positive 1, negative 0, half 0.5, ignore: left out of that pair's similarity) and in
    validation (positive 1, negative 0; half and ignore leave the study out of that finding's AUROC)."""

    uncertain: Literal["positive", "negative", "half", "ignore"] = "half"


@dataclasses.dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (per step)."""

    lr: float = 1e-3
    text_lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05


@dataclasses.dataclass
class DataConfig:
    """Loader and augmentation."""

    batch_size: int = 32
    num_workers: int = 0
    flip_axes: list[int] = dataclasses.field(default_factory=list)
    intensity: float = 0.05
    #: random crop of this fraction of each side, padded back (1.0: no crop)
    crop_scale: float = 1.0
    #: where the intensity jitter runs: in the loader's workers (on float volumes), or on the
    #: training device on the whole batch (the loader then ships the cache's uint8 volumes: on a GPU
    #: the float conversion and jitter cost nothing, in a CPU worker they cost most of the loading)
    intensity_on: Literal["loader", "device"] = "loader"
    #: which manifest text trains the text tower: the cleaned report, or a section
    text_field: Literal["report", "findings", "impression"] = "report"
    #: probability that a study's text is a random subset of its sentences (0: whole report)
    sentence_sampling: float = 0.0


@dataclasses.dataclass
class TrainerConfig:
    """Passed to ``lightning.Trainer``."""

    max_steps: int = 300
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 10
    seed: int = 0
    deterministic: bool = False
    #: BatchNorm statistics over the global batch (GPU only; CPU ranks keep per-rank statistics)
    sync_batchnorm: bool = False
    #: torch.compile the image tower (in place: parameter names and exports are unchanged)
    compile: bool = False
    #: the image tower's weights in channels_last_3d (CUDA only: cuDNN's faster 3D kernels; measured in docs/benchmarks.md)
    channels_last: bool = False
    threads: int | None = None
    #: keep checkpoints/last.ckpt current every K optimizer steps (None: at the end of each epoch)
    checkpoint_every: int | None = None


@dataclasses.dataclass
class ValidationConfig:
    """Zero-shot macro AUROC and report->study Recall@5 on the val split during training."""

    #: every K optimizer steps (and at the last); None: no validation during training
    every_n_steps: int | None = None
    #: the first N val studies (embedding the whole split every K steps can dominate a large run)
    max_studies: int = 2000


@dataclasses.dataclass
class PretrainConfig:
    """A whole pretraining run."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    labels: LabelsConfig = dataclasses.field(default_factory=LabelsConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)

    def validate(self, where: str) -> None:
        from medalign.losses.registry import list_losses

        if self.loss.name not in list_losses():
            raise ConfigError.at(where, "loss.name", f"'{self.loss.name}' is not one of {', '.join(list_losses())}")
        if not 0.0 <= self.loss.mix <= 1.0:
            raise ConfigError.at(where, "loss.mix", f"must lie in [0, 1], got {self.loss.mix}")
        if self.loss.findings.weight < 0:
            raise ConfigError.at(where, "loss.findings.weight", f"must be >= 0, got {self.loss.findings.weight}")
        if not 0.5 <= self.data.crop_scale <= 1.0:
            raise ConfigError.at(where, "data.crop_scale", f"must lie in [0.5, 1], got {self.data.crop_scale}")
        if self.data.batch_size < 2:
            raise ConfigError.at(where, "data.batch_size", "contrastive training needs at least 2")
        if self.validation.every_n_steps is not None and self.validation.every_n_steps < 1:
            raise ConfigError.at(where, "validation.every_n_steps", "must be >= 1 or null")
        if self.trainer.max_steps < 1:
            raise ConfigError.at(where, "trainer.max_steps", "must be >= 1")


@dataclasses.dataclass
class FinetuneAugmentConfig:
    """Training-time augmentation of fine-tuning (:func:`medalign.data.augment.build_augmentation`)."""

    flip_axes: list[int] = dataclasses.field(default_factory=lambda: [0])
    intensity: float = 0.05
    crop_scale: float = 0.9


@dataclasses.dataclass
class FinetuneTrainerConfig:
    """Where fine-tuning runs (Lightning's accelerator, devices, nodes, strategy, precision)."""

    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    #: ``auto``: bf16-mixed on GPU, 32-true on CPU
    precision: str = "auto"


@dataclasses.dataclass
class FinetuneConfig:
    """``medalign finetune`` (``configs/finetune/*.yaml``): encoder + linear head on finding labels."""

    epochs: int = 5
    #: per device
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    #: linear warm-up over this fraction of all steps, then cosine decay
    warmup_fraction: float = 0.1
    gradient_clip_val: float = 1.0
    #: cap of the class-balancing positive weight ((negatives / positives) per finding)
    max_pos_weight: float = 50.0
    seed: int = 0
    num_workers: int = 0
    augment: FinetuneAugmentConfig = dataclasses.field(default_factory=FinetuneAugmentConfig)
    trainer: FinetuneTrainerConfig = dataclasses.field(default_factory=FinetuneTrainerConfig)

    def validate(self, where: str) -> None:
        if self.epochs < 1:
            raise ConfigError.at(where, "epochs", "must be >= 1")
        if self.batch_size < 1:
            raise ConfigError.at(where, "batch_size", "must be >= 1")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError.at(where, "warmup_fraction", f"must lie in [0, 1), got {self.warmup_fraction}")
        if not 0.5 <= self.augment.crop_scale <= 1.0:
            raise ConfigError.at(where, "augment.crop_scale", f"must lie in [0.5, 1], got {self.augment.crop_scale}")
        if self.trainer.devices < 1 or self.trainer.num_nodes < 1:
            raise ConfigError.at(where, "trainer.devices", "devices and num_nodes must be >= 1")


def with_loss_needs(config: PretrainConfig) -> PretrainConfig:
    """``config`` with what its loss needs from the model (:class:`~medalign.losses.registry.LossEntry`):
    a learnable logit bias for SigLIP. The run saves this config, so an export rebuilds the same model."""
    from medalign.losses.registry import loss_entry

    if loss_entry(config.loss.name).needs_bias and not config.model.logit_bias:
        return dataclasses.replace(config, model=dataclasses.replace(config.model, logit_bias=True))
    return config
