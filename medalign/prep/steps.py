"""The preprocessing-step registry: each name a preset may list under ``steps:``, the MONAI
dictionary transform it builds (imported when a pipeline is built: MONAI takes seconds to import)
and that transform's defaults. A new step is one :func:`register_step` call here, or in a module of
one's own that calls it before the preset is loaded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

#: the key of the image in the dictionaries the transforms pass along
KEY = "image"


@dataclasses.dataclass(frozen=True)
class StepEntry:
    """A registered preprocessing step."""

    name: str
    #: returns the dictionary transform class (``cls(keys=[KEY], **options)``)
    transform: Callable[[], type]
    #: options the step sets unless the preset does
    defaults: dict[str, Any]
    description: str = ""


_STEPS: dict[str, StepEntry] = {}


def register_step(name: str, transform: Callable[[], type], defaults: dict[str, Any] | None = None, description: str = "") -> None:
    """Register ``name`` as a step building ``transform()`` with ``defaults`` under the preset's options."""
    _STEPS[name] = StepEntry(name, transform, dict(defaults or {}), description)


def list_steps() -> list[str]:
    """The registered step names, in registration order (what a preset's ``steps:`` accepts)."""
    return list(_STEPS)


def get_step(name: str) -> StepEntry:
    """The registered step ``name``."""
    if name not in _STEPS:
        raise KeyError(f"unknown step '{name}' (known: {', '.join(_STEPS)})")
    return _STEPS[name]


def _monai(name: str) -> Callable[[], type]:
    def transform() -> type:
        from monai import transforms

        return getattr(transforms, name)

    return transform


def _axis_aligned_spacing() -> type:
    from medalign.prep.spacing import AxisAlignedSpacingd

    return AxisAlignedSpacingd


def _fused_window() -> type:
    from medalign.prep.window import FusedScaleIntensityRanged

    return FusedScaleIntensityRanged


def _body_box() -> type:
    from medalign.prep.body_box import BodyBoxd

    return BodyBoxd


register_step("orientation", _monai("Orientationd"), {"axcodes": "RAS", "labels": (("L", "R"), ("P", "A"), ("I", "S"))},
              "reorient to axis codes (RAS: the canonical orientation)")
register_step("spacing", _axis_aligned_spacing, {"mode": "bilinear", "padding_mode": "border"},
              "resample to a voxel spacing in mm (Spacingd's options; axis-aligned grids on a fast path)")
register_step("window", _fused_window, {"b_min": 0.0, "b_max": 1.0, "clip": True},
              "an intensity window (HU for CT) mapped to [0, 1]")
register_step("percentile_window", _monai("ScaleIntensityRangePercentilesd"),
              {"lower": 1.0, "upper": 99.0, "b_min": 0.0, "b_max": 1.0, "clip": True}, "a percentile window mapped to [0, 1]")
register_step("crop_or_pad", _monai("ResizeWithPadOrCropd"), {}, "centre crop or pad to a size")
register_step("resize", _monai("Resized"), {"mode": "trilinear"}, "resize to a size")
register_step("crop_foreground", _monai("CropForegroundd"), {"source_key": KEY, "allow_smaller": True}, "crop to the foreground box")
register_step("body_box", _body_box, {}, "crop to the box of voxels above a threshold (CT: the body, HU > -500)")
