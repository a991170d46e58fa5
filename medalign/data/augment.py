"""On-the-fly 3D augmentation from MONAI array transforms (random crop, flips, intensity jitter)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def build_augmentation(flip_axes: list[int], intensity: float, crop_scale: float = 1.0, spatial_size: Sequence[int] | None = None):
    """MONAI ``Compose`` applied to a ``(1, X, Y, Z)`` tensor, or ``None`` when nothing is enabled.

    ``crop_scale`` < 1 crops a random box of that fraction of each side and pads it back to
    ``spatial_size`` (a random shift of the anatomy); flips along ``flip_axes`` (p=0.5); intensity
    scale and shift of up to ``intensity`` (0: none here, e.g. when :func:`jitter_intensity` does
    it on the device). Crop and flips alone work on the cache's integer volume as it is.
    """
    from monai.transforms import Compose, RandFlip, RandScaleCrop, RandScaleIntensity, RandShiftIntensity, ResizeWithPadOrCrop

    steps = []
    if crop_scale < 1.0:
        if spatial_size is None:
            raise ValueError("a random crop needs the volumes' spatial size to pad back to")
        steps += [RandScaleCrop(roi_scale=crop_scale, random_size=False), ResizeWithPadOrCrop(spatial_size=tuple(spatial_size))]
    steps += [RandFlip(prob=0.5, spatial_axis=a) for a in flip_axes]
    if intensity > 0:
        steps += [RandScaleIntensity(factors=intensity, prob=1.0), RandShiftIntensity(offsets=intensity, prob=1.0)]
    if not steps:
        return None
    return Compose(steps).set_random_state(seed=0)


def draw_intensity_jitter(rng, intensity: float) -> tuple[float, float]:
    """``(factor, offset)`` as MONAI's RandScaleIntensity and RandShiftIntensity draw them: each
    uniform in ``[-intensity, intensity]``."""
    return float(rng.uniform(-intensity, intensity)), float(rng.uniform(-intensity, intensity))


def jitter_intensity(images, jitter):
    """``(B, 1, X, Y, Z)`` float images, ``(B, 2)`` (factor, offset) per study -> ``x * (1 + factor) + offset``:
    MONAI's scale-then-shift jitter, applied to a whole batch on its device (no float volume is
    built in the loader). Integer (uint8 cache) images are read as ``x / 255`` in the same single
    pass: the float32 result is the only full-size tensor written."""
    shape = (-1,) + (1,) * (images.dim() - 1)
    dtype = images.dtype if images.is_floating_point() else torch.float32
    factor, offset = jitter[:, 0].to(dtype).reshape(shape), jitter[:, 1].to(dtype).reshape(shape)
    if not images.is_floating_point():
        return torch.addcmul(offset, images, (1 + factor) / 255.0)
    return images * (1 + factor) + offset
