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
from medalign.io.dicom import Volume

KEY = "image"


def _registry() -> dict[str, tuple[type, dict[str, Any]]]:
    # imported lazily: MONAI takes seconds to import and the CLI should start fast
    from monai import transforms as T

    return {
        "orientation": (T.Orientationd, {"axcodes": "RAS", "labels": (("L", "R"), ("P", "A"), ("I", "S"))}),
        "spacing": (T.Spacingd, {"mode": "bilinear", "padding_mode": "border"}),
        "window": (T.ScaleIntensityRanged, {"b_min": 0.0, "b_max": 1.0, "clip": True}),
        "percentile_window": (T.ScaleIntensityRangePercentilesd, {"lower": 1.0, "upper": 99.0, "b_min": 0.0, "b_max": 1.0, "clip": True}),
        "crop_or_pad": (T.ResizeWithPadOrCropd, {}),
        "resize": (T.Resized, {"mode": "trilinear"}),
        "crop_foreground": (T.CropForegroundd, {"source_key": KEY, "allow_smaller": True}),
    }


STEP_NAMES = ("orientation", "spacing", "window", "percentile_window", "crop_or_pad", "resize", "crop_foreground")


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
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "keys", "args", "kwargs"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(f"{where}[{i}] ({name}): unknown option '{unknown[0]}'")
        transforms.append(cls(keys=[KEY], **{**defaults, **options}))
    return Compose(transforms)


def apply_preprocessing(volume: Volume, pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Run ``pipeline`` on ``volume``; returns the ``(X, Y, Z)`` float32 array and its affine."""
    from monai.data import MetaTensor

    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None], affine=torch.as_tensor(volume.affine, dtype=torch.float64))
    out = pipeline({KEY: image})[KEY]
    array = out[0].detach().cpu().numpy().astype(np.float32)
    affine = np.asarray(out.affine, dtype=float) if hasattr(out, "affine") else volume.affine
    return array, affine
