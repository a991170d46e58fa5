"""3D image encoders created by name (a small timm-style registry over MONAI networks).

Every encoder maps ``(B, 1, X, Y, Z)`` to pooled features and projects them to ``(B, D)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medalign.errors import ConfigError

@dataclasses.dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder: its factory and where its parts are, so that no code asks for its name."""

    #: ``factory(**options) -> (backbone, feature_dim)``; its signature is the list of allowed options
    factory: Callable[..., tuple[nn.Module, int]]
    #: dotted name (under the backbone) of the module whose output is the deepest spatial map ``(B, C, x, y, z)``
    spatial_layer: str
    #: the backbone's stages, whose activations gradient checkpointing recomputes
    stages: Callable[[nn.Module], list[nn.Module]]


IMAGE_ENCODERS: dict[str, EncoderEntry] = {}


def register_image_encoder(name: str, spatial_layer: str, stages: Callable[[nn.Module], list[nn.Module]]):
    """Decorator (timm-style): register a factory returning ``(backbone, feature_dim)`` under ``name``,
    with the module where explanation maps (Grad-CAM) read its deepest spatial map and its stages."""

    def wrap(fn):
        IMAGE_ENCODERS[name] = EncoderEntry(fn, spatial_layer, stages)
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


def space_to_depth_conv3d(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv3d(x, weight, stride=2, padding=3)`` for one input channel and a 7 x 7 x 7 kernel,
    computed as a stride-1 4 x 4 x 4 convolution over the input's 2 x 2 x 2 phases (8 channels).

    ``x (B, 1, X, Y, Z)``, ``weight (C, 1, 7, 7, 7)`` -> ``(B, C, ceil(X/2), ceil(Y/2), ceil(Z/2))``.
    With one input channel cuDNN has no tensor-core kernel for the stem and falls back to a generic
    one (60% of resnet18_3d's step at 240 x 240 x 120 on an H200); eight phase channels take the
    tensor cores for 8 x 64 / 343 = 1.5x the multiply-adds. Output ``o`` reads padded input ``2o + k``:
    with ``k = 2a + p`` (the kernel padded to 8, ``w[7] = 0``) that is phase ``p`` at ``o + a``.
    """
    b = x.shape[0]
    out = [(n - 1) // 2 + 1 for n in x.shape[2:]]
    pads: list[int] = []
    for n, o in zip(reversed(x.shape[2:]), reversed(out)):
        pads += [3, 2 * (o + 3) - n - 3]  # F.pad lists the last axis first
    xp = F.pad(x, pads)
    x2, y2, z2 = (d // 2 for d in xp.shape[2:])
    # (B, X2, 2, Y2, 2, Z2, 2) -> channels (px, py, pz) last in memory: the layout cuDNN's fast kernels read
    phases = xp.reshape(b, x2, 2, y2, 2, z2, 2).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, x2, y2, z2, 8).permute(0, 4, 1, 2, 3)
    c = weight.shape[0]
    w = F.pad(weight, (0, 1, 0, 1, 0, 1)).reshape(c, 4, 2, 4, 2, 4, 2).permute(0, 2, 4, 6, 1, 3, 5).reshape(c, 8, 4, 4, 4)
    return F.conv3d(phases, w.contiguous(memory_format=torch.channels_last_3d))


class PhaseStemConv3d(nn.Conv3d):
    """MONAI ResNet's stem (1 channel in, 7 x 7 x 7, stride 2, padding 3) with the same weight
    (``conv1.weight``, checkpoints unchanged) that runs :func:`space_to_depth_conv3d` on a GPU."""

    #: False runs the direct convolution everywhere (e.g. to count the model's own FLOPs)
    phases = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.phases:
            return space_to_depth_conv3d(x, self.weight)
        return super().forward(x)  # on a CPU both run alike (measured): MONAI's own convolution stays


def _monai_resnet(
    depth: int,
    widen_factor: float = 1.0,
    conv1_t_size: int = 7,
    conv1_t_stride: int = 2,
    no_max_pool: bool = False,
    pooling: str = "avg",
    phase_stem: bool = True,
) -> tuple[nn.Module, int]:
    from monai.networks import nets

    factory = getattr(nets, f"resnet{depth}")
    net = factory(spatial_dims=3, n_input_channels=1, feed_forward=False, widen_factor=widen_factor,
                  conv1_t_size=conv1_t_size, conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool)
    stem = net.conv1
    if phase_stem and (stem.in_channels, stem.kernel_size, stem.stride, stem.padding, stem.bias) == (1, (7, 7, 7), (2, 2, 2), (3, 3, 3), None):
        net.conv1 = PhaseStemConv3d(1, stem.out_channels, 7, stride=2, padding=3, bias=False)
        net.conv1.weight = stem.weight  # MONAI's initialisation kept
    expansion = 4 if depth >= 50 else 1
    dim = int(512 * widen_factor) * expansion
    if pooling == "avgmax":
        net.avgpool = AvgMaxPool3d()
        dim *= 2
    elif pooling != "avg":
        raise ConfigError(f"model.image.options.pooling: '{pooling}' is not avg or avgmax")
    return net, dim


def _resnet_stages(net: nn.Module) -> list[nn.Module]:
    return [net.layer1, net.layer2, net.layer3, net.layer4]


for _depth in (10, 18, 34, 50):
    # a partial binds the depth: its signature is the options a preset may give
    register_image_encoder(f"resnet{_depth}_3d", spatial_layer="layer4", stages=_resnet_stages)(functools.partial(_monai_resnet, _depth))


@register_image_encoder("densenet121_3d", spatial_layer="class_layers.relu",
                        stages=lambda net: [m for n, m in net.features.named_children() if n.startswith("denseblock")])
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


@register_image_encoder("swin_3d", spatial_layer="spatial",
                        stages=lambda net: [getattr(net.swin, f"layers{i}")[0] for i in (1, 2, 3, 4)])
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


@register_image_encoder("vit_3d", spatial_layer="spatial", stages=lambda net: list(net.vit.blocks))
def _vit(img_size: list[int] = (96, 96, 96), patch_size: list[int] = (16, 16, 16), hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
         fused_attention: bool = True) -> tuple[nn.Module, int]:
    from monai.networks.nets import ViT

    vit = ViT(in_channels=1, img_size=tuple(img_size), patch_size=tuple(patch_size), hidden_size=hidden_size,
              num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim, classification=False, spatial_dims=3)
    for block in vit.blocks:
        # the same attention through F.scaled_dot_product_attention: at 240 x 240 x 120 (3,375 tokens) MONAI's
        # einsum keeps a (heads, tokens, tokens) matrix per layer for backward; the fused kernels keep none
        block.attn.use_flash_attention = fused_attention
    return _ViTPooled(vit, tuple(i // p for i, p in zip(img_size, patch_size))), hidden_size


class ImageEncoder(nn.Module):
    """A registered backbone with a linear projection: ``(B, 1, X, Y, Z) -> (B, D)`` (not normalised).

    ``activation_checkpointing`` recomputes each stage's activations in the backward pass
    (:meth:`set_grad_checkpointing`).
    """

    def __init__(self, name: str, embed_dim: int, options: dict[str, Any] | None = None, activation_checkpointing: bool = False) -> None:
        super().__init__()
        if name not in IMAGE_ENCODERS:
            raise ConfigError(f"model.image.name: unknown image encoder '{name}' (known: {', '.join(list_models())})")
        entry = IMAGE_ENCODERS[name]
        options = dict(options or {})
        allowed = set(inspect.signature(entry.factory).parameters)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(f"model.image.options: unknown option '{unknown[0]}' for {name} (allowed: {', '.join(sorted(allowed))})")
        self.name = name
        self.backbone, self.feature_dim = entry.factory(**options)
        self.proj = nn.Linear(self.feature_dim, embed_dim)
        self.grad_checkpointing = False
        if activation_checkpointing:
            self.set_grad_checkpointing(True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of storing them (less
        memory, about one extra forward), as timm's method of that name. PyTorch's composable
        ``checkpoint`` hooks the stages in place: no forward is replaced and parameter names do not
        change. BatchNorm running statistics see the recomputed forward too (a second update)."""
        from torch.distributed._composable import checkpoint

        for stage in IMAGE_ENCODERS[self.name].stages(self.backbone):
            if enable and not self.grad_checkpointing:
                checkpoint(stage)
            elif self.grad_checkpointing:
                checkpoint.state(stage).enable_hook = enable
        self.grad_checkpointing = self.grad_checkpointing or enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x).flatten(1))

    @property
    def spatial_layer(self) -> str:
        """Dotted name (under this module) of the layer giving the deepest spatial map ``(B, C, x, y, z)``."""
        return "backbone." + IMAGE_ENCODERS[self.name].spatial_layer


def create_image_encoder(name: str, embed_dim: int = 256, activation_checkpointing: bool = False, **options: Any) -> ImageEncoder:
    """Create a registered encoder, e.g. ``create_image_encoder("resnet18_3d", 512)``."""
    return ImageEncoder(name, embed_dim, options, activation_checkpointing)
