"""On-the-fly 3D augmentation from MONAI array transforms (random flips, intensity jitter)."""

from __future__ import annotations


def build_augmentation(flip_axes: list[int], intensity: float):
    """MONAI ``Compose`` applied to a ``(1, X, Y, Z)`` tensor: flips along ``flip_axes`` (p=0.5) and
    intensity scale/shift of up to ``intensity``. ``None`` when nothing is enabled."""
    from monai.transforms import Compose, RandFlip, RandScaleIntensity, RandShiftIntensity

    steps = [RandFlip(prob=0.5, spatial_axis=a) for a in flip_axes]
    if intensity > 0:
        steps += [RandScaleIntensity(factors=intensity, prob=1.0), RandShiftIntensity(offsets=intensity, prob=1.0)]
    if not steps:
        return None
    return Compose(steps).set_random_state(seed=0)
