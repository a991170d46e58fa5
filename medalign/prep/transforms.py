"""Preprocessing as a composed list of named MONAI dictionary transforms, configured in YAML.

A preset lists steps in order, e.g. ``- spacing: {pixdim: [8, 8, 7.5]}``; each name maps to
one MONAI transform and its options are checked against that transform's signature.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from medalign.errors import ConfigError
from medalign.io.volume import Volume

KEY = "image"


def _registry() -> dict[str, tuple[type, dict[str, Any]]]:
    # imported lazily: MONAI takes seconds to import and the CLI should start fast
    from monai import transforms as T

    return {
        "orientation": (T.Orientationd, {"axcodes": "RAS", "labels": (("L", "R"), ("P", "A"), ("I", "S"))}),
        "spacing": (AxisAlignedSpacingd, {"mode": "bilinear", "padding_mode": "border"}),
        "window": (T.ScaleIntensityRanged, {"b_min": 0.0, "b_max": 1.0, "clip": True}),
        "percentile_window": (T.ScaleIntensityRangePercentilesd, {"lower": 1.0, "upper": 99.0, "b_min": 0.0, "b_max": 1.0, "clip": True}),
        "crop_or_pad": (T.ResizeWithPadOrCropd, {}),
        "resize": (T.Resized, {"mode": "trilinear"}),
        "crop_foreground": (T.CropForegroundd, {"source_key": KEY, "allow_smaller": True}),
    }


def build_preprocessing(steps: list[dict[str, Any]], where: str = "steps"):
    """Compose ``steps`` (``[{name: {option: value}}, ...]``) into a MONAI ``Compose``."""
    from monai.transforms import Compose

    registry = _registry()
    transforms = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or len(step) != 1:
            raise ConfigError(f"{where}[{i}]: each step is a mapping {{name: {{options}}}}")
        (name, options), = step.items()
        if name not in registry:
            raise ConfigError(f"{where}[{i}]: unknown step '{name}' (known: {', '.join(sorted(registry))})")
        cls, defaults = registry[name]
        options = dict(options or {})
        checked = cls.wrapped() if hasattr(cls, "wrapped") else cls  # a wrapper takes its MONAI transform's options
        allowed = set(inspect.signature(checked.__init__).parameters) - {"self", "keys", "args", "kwargs"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(f"{where}[{i}] ({name}): unknown option '{unknown[0]}'")
        transforms.append(cls(keys=[KEY], **{**defaults, **options}))
    return Compose(transforms)


def _is_axis_aligned(affine: np.ndarray) -> bool:
    """True when the voxel axes run along the world axes (a diagonal 3x3 part: no rotation, no shear)."""
    m = np.asarray(affine, dtype=float)[:3, :3]
    return bool(np.all(np.abs(m - np.diag(np.diag(m))) <= 1e-6 * np.abs(np.diag(m)).max()))


def resample_axis_aligned(image: torch.Tensor, src_affine: np.ndarray, out_affine: np.ndarray, out_shape: tuple[int, ...]) -> torch.Tensor:
    """Linear resampling ``(C, X, Y, Z) -> (C, *out_shape)`` between two axis-aligned grids, one axis at a
    time, with border padding: where source and target axes are parallel, trilinear interpolation
    separates into three 1D ones (a gather of two neighbours each)."""
    out = image
    for axis in range(3):
        scale = out_affine[axis, axis] / src_affine[axis, axis]
        shift = (out_affine[axis, 3] - src_affine[axis, 3]) / src_affine[axis, axis]
        n = image.shape[axis + 1]
        if out_shape[axis] == n and abs(scale - 1) < 1e-9 and abs(shift) < 1e-6:
            continue  # this axis keeps its samples
        pos = (torch.arange(out_shape[axis], dtype=torch.float64) * scale + shift).clamp(0, n - 1)
        lo = pos.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = (pos - lo).to(out.dtype).reshape([-1 if d == axis + 1 else 1 for d in range(out.dim())])
        out = out.index_select(axis + 1, lo) * (1 - w) + out.index_select(axis + 1, hi) * w
    return out


class AxisAlignedSpacingd:
    """MONAI's ``Spacingd`` (same options, same output grid and values) with a fast path: when the
    image and the target grid are axis-aligned and the mode is bilinear with border padding, the
    resampling runs one axis at a time (:func:`resample_axis_aligned`, about 20x faster on CPU than
    the general 3D ``grid_sample``). MONAI computes the target grid either way (lazily); anything
    else (oblique images, other modes) goes to ``Spacingd`` itself."""

    @staticmethod
    def wrapped() -> type:
        """The MONAI transform whose options this one takes (checked against its signature)."""
        from monai.transforms import Spacingd

        return Spacingd

    def __init__(self, keys, **options) -> None:
        from monai.transforms import Spacingd

        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.spacing = Spacingd(keys=self.keys, **options)
        self.geometry = Spacingd(keys=self.keys, lazy=True, **options)
        self.fast = options.get("mode") == "bilinear" and options.get("padding_mode") == "border" and not options.get("diagonal", False)

    def __call__(self, data: dict) -> dict:
        from monai.data import MetaTensor

        d = dict(data)
        for key in self.keys:
            image = d[key]
            src = np.asarray(image.affine, dtype=float) if isinstance(image, MetaTensor) else None
            if not (self.fast and src is not None and _is_axis_aligned(src) and image.dtype.is_floating_point):
                d[key] = self.spacing({key: image})[key]
                continue
            # the target grid as MONAI defines it, from a stand-in of the same shape that holds no data
            stand_in = MetaTensor(torch.zeros(1).expand(image.shape), affine=image.affine)
            pending = self.geometry({key: stand_in})[key]
            out_affine = np.asarray(pending.peek_pending_affine(), dtype=float)
            out_shape = tuple(int(v) for v in pending.peek_pending_shape())
            if not _is_axis_aligned(out_affine):
                d[key] = self.spacing({key: image})[key]
                continue
            values = resample_axis_aligned(image.as_tensor(), src, out_affine, out_shape)
            d[key] = MetaTensor(values, affine=torch.as_tensor(out_affine, dtype=torch.float64))
        return d


def apply_preprocessing(volume: Volume, pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Run ``pipeline`` on ``volume``; returns the ``(X, Y, Z)`` float32 array and its affine."""
    from monai.data import MetaTensor

    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None], affine=torch.as_tensor(volume.affine, dtype=torch.float64))
    out = pipeline({KEY: image})[KEY]
    array = out[0].detach().cpu().numpy().astype(np.float32)
    affine = np.asarray(out.affine, dtype=float) if hasattr(out, "affine") else volume.affine
    return array, affine
