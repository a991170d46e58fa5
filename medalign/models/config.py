"""Model configuration (the ``model:`` section of a pretraining YAML, saved with exports)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal


@dataclasses.dataclass
class ImageModelConfig:
    """A registered 3D image encoder and its options (passed to the MONAI network)."""

    name: str = "resnet10_3d"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: recompute each stage's activations in the backward pass (memory for compute)
    activation_checkpointing: bool = False


@dataclasses.dataclass
class TextModelConfig:
    """A BERT-family text encoder loaded from a local folder (``builtin:all-minilm-l6-v2`` ships with medalign's dependencies)."""

    model: str = "builtin:all-minilm-l6-v2"
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 128
    #: transformer layers trained from the top; -1 all, 0 frozen
    trainable_layers: int = -1


@dataclasses.dataclass
class ModelConfig:
    """Both towers and the shared embedding."""

    embed_dim: int = 256
    image: ImageModelConfig = dataclasses.field(default_factory=ImageModelConfig)
    text: TextModelConfig = dataclasses.field(default_factory=TextModelConfig)
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    #: learnable bias on the logits (SigLIP)
    logit_bias: bool = False
