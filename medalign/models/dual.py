"""The dual encoder: image and text towers in one normalised embedding space, with a learnable
clamped logit scale (and bias for SigLIP). Saved as a self-contained folder:

    config.json          ModelConfig (text.model -> "text")
    model.safetensors    image tower, text projection, logit scale/bias
    text/                the Hugging Face text model and tokenizer (safetensors)
    extra files          e.g. prep_config.yaml, vocab.yaml copied by the trainer

Nothing is pickled; loading never executes code from the folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medalign.config import from_dict, to_dict
from medalign.errors import InputError
from medalign.io.fingerprint import file_sha256
from medalign.models.config import ModelConfig
from medalign.models.image import ImageEncoder
from medalign.models.text import TextEncoder, resolve_text_model

WEIGHTS = "model.safetensors"


class DualEncoder(nn.Module):
    """``encode_image``: ``(B, 1, X, Y, Z) -> (B, D)``; ``encode_text``: ``B texts -> (B, D)``; both L2-normalised."""

    def __init__(self, config: ModelConfig, text_dir: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.image = ImageEncoder(config.image.name, config.embed_dim, config.image.options, config.image.activation_checkpointing)
        self.text = TextEncoder(
            text_dir or resolve_text_model(config.text.model), config.embed_dim,
            pooling=config.text.pooling, max_length=config.text.max_length, trainable_layers=config.text.trainable_layers,
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if config.logit_bias else None

    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)``; the parameter itself is kept at most ln ``max_logit_scale`` by
        :meth:`clamp_logit_scale` after each optimizer step (as open_clip does), so its gradient never
        vanishes at the cap the way a clamp of ``exp()`` would make it."""
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp ``logit_scale`` in place to [0, ln ``max_logit_scale``]."""
        self.logit_scale.clamp_(0.0, math.log(self.config.max_logit_scale))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z) -> (B, D)`` unit vectors. Float input is the ``[0, 1]`` window; integer (uint8)
        input holds it in 256 levels and is scaled here, on the device."""
        x = images.to(self.logit_scale.dtype)
        if not images.is_floating_point():
            x = x / 255.0
        return F.normalize(self.image(x), dim=-1)

    def encode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised texts ``-> (B, D)`` unit vectors."""
        return F.normalize(self.text(**tokens), dim=-1)

    def encode_text(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """``B`` strings ``-> (B, D)`` unit vectors (batched, on the model's device)."""
        device = self.logit_scale.device
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = {k: v.to(device) for k, v in self.text.tokenize(texts[i : i + batch_size]).items()}
            out.append(self.encode_tokens(tokens))
        return torch.cat(out) if out else torch.empty(0, self.config.embed_dim, device=device)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the self-contained export folder (see module docstring)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.text.model.save_pretrained(folder / "text", safe_serialization=True)
        self.text.tokenizer.save_pretrained(folder / "text")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("text.model.")}
        save_file(state, str(folder / WEIGHTS))
        config = to_dict(self.config)
        config["text"]["model"] = "text"
        (folder / "config.json").write_text(json.dumps({"model": config, "format": "medalign-dual-encoder/1"}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> "DualEncoder":
        """Load an export folder written by :meth:`save_pretrained` (safetensors only)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path = folder / "config.json"
        if not cfg_path.is_file() or not (folder / WEIGHTS).is_file():
            raise InputError(f"{folder}: not an exported medalign model (needs config.json and {WEIGHTS})")
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{cfg_path}: invalid JSON ({e.msg})") from None
        config = from_dict(ModelConfig, meta["model"], where=str(cfg_path))
        model = cls(config, text_dir=folder / "text")
        try:
            state = load_file(str(folder / WEIGHTS), device=str(map_location))
        except (SafetensorError, OSError) as e:
            raise InputError(f"{folder / WEIGHTS}: unreadable weights ({e})") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("text.model.")]
        if missing or unexpected:
            raise InputError(f"{folder / WEIGHTS}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model.to(map_location).eval()


def export_fingerprint(folder: str | Path) -> str:
    """sha256 of an export folder's weights (``model.safetensors`` and the text model's): caches and
    indexes built with one model refuse another."""
    folder = Path(folder)
    return file_sha256(folder / WEIGHTS, *sorted((folder / "text").glob("*.safetensors")))
