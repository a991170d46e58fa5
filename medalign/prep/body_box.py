"""The ``body_box`` step: crop to the bounding box of the voxels above a threshold (the body in a CT:
air is about -1000 HU, fat -100), so that a fixed voxel budget is spent on the patient, not on the
air and table around them. MONAI's ``CropForegroundd`` with its ``select_fn`` set from YAML."""

from __future__ import annotations


class BodyBoxd:
    """``CropForegroundd(select_fn=lambda x: x > threshold, margin=margin)``; a volume with no voxel
    above ``threshold`` passes unchanged (MONAI would crop it to nothing)."""

    def __init__(self, keys, threshold: float = -500.0, margin: int | list[int] = 2) -> None:
        from monai.transforms import CropForegroundd

        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.threshold = float(threshold)
        self.crop = CropForegroundd(keys=self.keys, source_key=self.keys[0], select_fn=self._above, margin=margin, allow_smaller=True)

    def _above(self, x):
        return x > self.threshold

    def __call__(self, data: dict) -> dict:
        if not bool((data[self.keys[0]] > self.threshold).any()):
            return dict(data)
        return self.crop(data)
