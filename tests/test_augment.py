"""Augmentation: the device-side intensity jitter is MONAI's scale-then-shift, and the loader then
ships the cache's uint8 volumes (cropped and flipped) with each study's jitter drawn from its seed."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import ScaleIntensity, ShiftIntensity

from medalign.data.augment import build_augmentation, jitter_intensity
from medalign.data.dataset import StudyDataset, as_unit_float
from medalign.prep.manifest import read_manifest


def test_device_jitter_equals_monai_scale_then_shift():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((3, 1, 6, 5, 4)).astype(np.float32))
    jitter = torch.tensor([[0.04, -0.02], [-0.05, 0.05], [0.0, 0.01]])
    out = jitter_intensity(images, jitter)
    for b in range(3):
        f, o = (float(v) for v in jitter[b])
        ref = ShiftIntensity(offset=o)(ScaleIntensity(minv=None, maxv=None, factor=f)(images[b]))
        torch.testing.assert_close(out[b], torch.as_tensor(ref), rtol=0, atol=1e-6)


def test_loader_ships_uint8_and_a_seeded_jitter(prepared_ct):
    manifest = read_manifest(prepared_ct).subset("train")
    shape = np.load(manifest.volume_path(0), mmap_mode="r").shape
    loader_side = StudyDataset(manifest, augment=build_augmentation([0], 0.0, 0.9, shape), seed=3, device_intensity=0.05)
    item = loader_side[(5, 123)]
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (1, *shape)
    again = loader_side[(5, 123)]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["intensity_jitter"], again["intensity_jitter"])
    draws = torch.stack([loader_side[(5, d)]["intensity_jitter"] for d in range(200)])
    assert draws.abs().max() <= 0.05 and draws.std(0).min() > 0.02  # uniform in [-0.05, 0.05], both numbers
    # with crop and flips off, what the device computes is the cached volume, jittered
    plain = StudyDataset(manifest, augment=None, seed=3, device_intensity=0.05)[(5, 7)]
    out = jitter_intensity(as_unit_float(plain["image"][None]), plain["intensity_jitter"][None])[0]
    f, o = (float(v) for v in plain["intensity_jitter"])
    cached = np.load(manifest.volume_path(5)).astype(np.float64) / 255.0
    np.testing.assert_allclose(out[0].numpy(), cached * (1 + f) + o, atol=1e-6)


def test_device_jitter_reads_uint8_as_the_unit_window():
    """The training step hands the uint8 batch straight to the jitter: one pass, the same values as
    converting to [0, 1] first (float64 reference)."""
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (3, 1, 5, 4, 3), dtype=np.uint8)
    jitter = torch.tensor([[0.04, -0.02], [-0.05, 0.05], [0.0, 0.01]])
    out = jitter_intensity(torch.from_numpy(raw), jitter)
    assert out.dtype == torch.float32
    ref = raw.astype(np.float64) / 255.0 * (1 + jitter[:, 0].double().numpy().reshape(-1, 1, 1, 1, 1)) + jitter[:, 1].double().numpy().reshape(-1, 1, 1, 1, 1)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)
