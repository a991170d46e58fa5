"""3D image encoders created by name (a small timm-style registry over MONAI networks).

Every encoder maps ``(B, 1, X, Y, Z)`` to pooled features and projects them to ``(B, D)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medalign.errors import ConfigError

IMAGE_ENCODERS: dict[str, Callable[..., tuple[nn.Module, int]]] = {}
#: per encoder, the backbone module whose output is its deepest spatial feature map ``(B, C, x, y, z)``
SPATIAL_LAYERS: dict[str, str] = {}


def register_image_encoder(name: str, spatial_layer: str):
    """Decorator: register a factory returning ``(backbone, feature_dim)``; ``spatial_layer`` names the
    backbone module (dotted path) whose output is the deepest spatial feature map, where explanation
    maps (Grad-CAM) are read."""

    def wrap(fn):
        IMAGE_ENCODERS[name] = fn
        SPATIAL_LAYERS[name] = spatial_layer
        return fn

    return wrap


def list_models() -> list[str]:
    """The registered image encoder names, sorted."""
    return sorted(IMAGE_ENCODERS)


class TokensToGrid(nn.Module):
    """Patch tokens ``(B, N, C)`` laid back on their patch grid ``(B, C, gx, gy, gz)``."""

    def __init__(self, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, *self.grid)


class AvgMaxPool3d(nn.Module):
    """Global average and max pooling concatenated: ``(B, C, X, Y, Z) -> (B, 2C, 1, 1, 1)``.
    Max pooling keeps a small lesion's response that averaging over the volume would dilute."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True)], dim=1)


def _monai_resnet(
    depth: int,
    widen_factor: float = 1.0,
    conv1_t_size: int = 7,
    conv1_t_stride: int = 2,
    no_max_pool: bool = False,
    pooling: str = "avg",
) -> tuple[nn.Module, int]:
    from monai.networks import nets

    factory = getattr(nets, f"resnet{depth}")
    net = factory(spatial_dims=3, n_input_channels=1, feed_forward=False, widen_factor=widen_factor,
                  conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool)
    expansion = 4 if depth >= 50 else 1
    dim = int(512 * widen_factor) * expansion
    if pooling == "avgmax":
        net.avgpool = AvgMaxPool3d()
        dim *= 2
    elif pooling != "avg":
        raise ConfigError(f"model.image.options.pooling: '{pooling}' is not avg or avgmax")
    return net, dim


for _depth in (10, 18, 34, 50):
    register_image_encoder(f"resnet{_depth}_3d", spatial_layer="layer4")(lambda _d=_depth, **kw: _monai_resnet(_d, **kw))


@register_image_encoder("densenet121_3d", spatial_layer="class_layers.relu")
def _densenet121(dropout_prob: float = 0.0) -> tuple[nn.Module, int]:
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=1, dropout_prob=dropout_prob)
    net.class_layers.out = nn.Identity()  # keep pooled features
    return net, 1024


class _SwinPooled(nn.Module):
    """The Swin transformer of MONAI's SwinUNETR (no decoder), its deepest stage average-pooled."""

    def __init__(self, swin: nn.Module) -> None:
        super().__init__()
        self.swin = swin
        self.spatial = nn.Identity()  # the deepest stage's map passes here (where Grad-CAM reads it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % 32 for s in x.shape[2:]):
            raise ValueError(f"swin_3d needs each spatial size to be a multiple of 32, got {tuple(x.shape[2:])}")
        return self.spatial(self.swin(x, normalize=True)[-1]).mean(dim=(2, 3, 4))


@register_image_encoder("swin_3d", spatial_layer="spatial")
def _swin(feature_size: int = 24, depths: list[int] = (2, 2, 2, 2), num_heads: list[int] = (3, 6, 12, 24), use_checkpoint: bool = False) -> tuple[nn.Module, int]:
    from monai.networks.nets import SwinUNETR

    net = SwinUNETR(in_channels=1, out_channels=1, feature_size=feature_size, depths=tuple(depths), num_heads=tuple(num_heads),
                    spatial_dims=3, use_checkpoint=use_checkpoint)
    return _SwinPooled(net.swinViT), 16 * feature_size


class _ViTPooled(nn.Module):
    """MONAI's ViT, its patch tokens laid on their grid and average-pooled (the mean of the tokens)."""

    def __init__(self, vit: nn.Module, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.vit = vit
        self.spatial = TokensToGrid(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(x)
        return self.spatial(tokens).mean(dim=(2, 3, 4))


@register_image_encoder("vit_3d", spatial_layer="spatial")
def _vit(img_size: list[int] = (96, 96, 96), patch_size: list[int] = (16, 16, 16), hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072) -> tuple[nn.Module, int]:
    from monai.networks.nets import ViT

    vit = ViT(in_channels=1, img_size=tuple(img_size), patch_size=tuple(patch_size), hidden_size=hidden_size,
              num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim, classification=False, spatial_dims=3)
    return _ViTPooled(vit, tuple(i // p for i, p in zip(img_size, patch_size))), hidden_size


def _stages(name: str, backbone: nn.Module) -> list[nn.Module]:
    """The blocks whose activations activation checkpointing recomputes, per encoder family."""
    if name.startswith("resnet"):
        return [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    if name.startswith("densenet"):
        return [m for n, m in backbone.features.named_children() if n.startswith("denseblock")]
    if name == "vit_3d":
        return list(backbone.vit.blocks)
    if name == "swin_3d":
        return [getattr(backbone.swin, f"layers{i}")[0] for i in (1, 2, 3, 4)]  # each a ModuleList of one BasicLayer
    raise ConfigError(f"model.image.activation_checkpointing: not available for {name}")


def enable_activation_checkpointing(module: nn.Module) -> None:
    """Recompute ``module``'s activations in the backward pass instead of storing them (less memory,
    about one extra forward). The forward is replaced in place, so parameter names do not change.
    BatchNorm running statistics see the recomputed forward too (a second momentum update)."""
    from torch.utils.checkpoint import checkpoint

    original = module.forward

    def forward(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(original, *args, use_reentrant=False, **kwargs)
        return original(*args, **kwargs)

    module.forward = forward


class ImageEncoder(nn.Module):
    """A registered backbone with a linear projection: ``(B, 1, X, Y, Z) -> (B, D)`` (not normalised).

    ``activation_checkpointing`` recomputes each stage's activations in the backward pass.
    """

    def __init__(self, name: str, embed_dim: int, options: dict[str, Any] | None = None, activation_checkpointing: bool = False) -> None:
        super().__init__()
        if name not in IMAGE_ENCODERS:
            raise ConfigError(f"model.image.name: unknown image encoder '{name}' (known: {', '.join(sorted(IMAGE_ENCODERS))})")
        factory = IMAGE_ENCODERS[name]
        options = dict(options or {})
        allowed = set(inspect.signature(factory).parameters) - {"_d", "kw"}
        if name.startswith("resnet"):
            allowed = set(inspect.signature(_monai_resnet).parameters) - {"depth"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(f"model.image.options: unknown option '{unknown[0]}' for {name} (allowed: {', '.join(sorted(allowed))})")
        self.name = name
        self.backbone, self.feature_dim = factory(**options)
        self.proj = nn.Linear(self.feature_dim, embed_dim)
        if activation_checkpointing:
            for stage in _stages(name, self.backbone):
                enable_activation_checkpointing(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x).flatten(1))

    @property
    def spatial_layer(self) -> str:
        """Dotted name (under this module) of the layer giving the deepest spatial map ``(B, C, x, y, z)``."""
        return "backbone." + SPATIAL_LAYERS[self.name]


def create_image_encoder(name: str, embed_dim: int = 256, activation_checkpointing: bool = False, **options: Any) -> ImageEncoder:
    """Create a registered encoder, e.g. ``create_image_encoder("resnet18_3d", 512)``."""
    return ImageEncoder(name, embed_dim, options, activation_checkpointing)
