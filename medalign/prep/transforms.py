"""Preprocessing as a composed list of named MONAI dictionary transforms, configured in YAML.

A preset lists steps in order, e.g. ``- spacing: {pixdim: [8, 8, 7.5]}``; each name is a registered
step (:mod:`medalign.prep.steps`) and its options are checked against its transform's signature.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from medalign.errors import ConfigError
from medalign.io.volume import Volume
from medalign.prep.steps import KEY, get_step, list_steps


def build_preprocessing(steps: list[dict[str, Any]], where: str = "steps"):
    """Compose ``steps`` (``[{name: {option: value}}, ...]``) into a MONAI ``Compose``."""
    from monai.transforms import Compose

    transforms = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or len(step) != 1:
            raise ConfigError(f"{where}[{i}]: each step is a mapping {{name: {{options}}}}")
        (name, options), = step.items()
        if name not in list_steps():
            raise ConfigError(f"{where}[{i}]: unknown step '{name}' (known: {', '.join(list_steps())})")
        entry = get_step(name)
        cls, defaults = entry.transform(), entry.defaults
        options = dict(options or {})
        checked = cls.wrapped() if hasattr(cls, "wrapped") else cls  # a wrapper takes its MONAI transform's options
        allowed = set(inspect.signature(checked.__init__).parameters) - {"self", "keys", "args", "kwargs"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(f"{where}[{i}] ({name}): unknown option '{unknown[0]}'")
        transforms.append(cls(keys=[KEY], **{**defaults, **options}))
    return Compose(transforms)


def apply_preprocessing(volume: Volume, pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Run ``pipeline`` on ``volume``; returns the ``(X, Y, Z)`` float32 array and its affine."""
    from monai.data import MetaTensor

    array = volume.array
    if array.dtype != np.float32 or any(s < 0 for s in array.strides):  # torch takes any positive strides: no copy of a
        array = np.ascontiguousarray(array, dtype=np.float32)          # Fortran-ordered NIfTI array (0.7 s at 512x512x200)
    image = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(volume.affine, dtype=torch.float64))
    out = pipeline({KEY: image})[KEY]
    array = np.ascontiguousarray(out[0].detach().cpu().numpy(), dtype=np.float32)  # the cache stays C-ordered for the loader
    affine = np.asarray(out.affine, dtype=float) if hasattr(out, "affine") else volume.affine
    return array, affine
