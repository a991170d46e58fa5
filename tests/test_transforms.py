"""The prep steps: the fast spacing step gives MONAI's ``Spacingd`` grid and values (MONAI is the reference)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacingd
from nibabel.testing import data_path

from medalign.prep.spacing import AxisAlignedSpacingd
from medalign.prep.transforms import build_preprocessing

OPTIONS = {"mode": "bilinear", "padding_mode": "border"}


def _image(shape, diag, origin, seed=0) -> MetaTensor:
    rng = np.random.default_rng(seed)
    affine = np.diag([*diag, 1.0])
    affine[:3, 3] = origin
    return MetaTensor(torch.from_numpy(rng.normal(size=(1, *shape)).astype(np.float32)), affine=torch.as_tensor(affine))


@pytest.mark.parametrize(
    "shape, diag, pixdim",
    [
        ((64, 64, 40), (1.5, 1.5, 1.875), (1.5, 1.5, 3.0)),  # only the slice axis changes
        ((50, 40, 30), (0.7, 0.9, 2.5), (1.1, 0.6, 1.7)),  # every axis, up and down
        ((50, 40, 30), (-0.7, 0.9, -2.5), (1.1, 0.6, 1.7)),  # flipped axes (not RAS)
        ((33, 17, 9), (2.0, 2.0, 2.0), (2.0, 2.0, 2.0)),  # nothing to do
    ],
)
def test_axis_aligned_spacing_equals_monai(shape, diag, pixdim):
    image = _image(shape, diag, (-40.3, 12.1, 7.7))
    ref = Spacingd(keys="image", pixdim=pixdim, **OPTIONS)({"image": image})["image"]
    out = AxisAlignedSpacingd(keys="image", pixdim=pixdim, **OPTIONS)({"image": image})["image"]
    assert out.shape == ref.shape
    np.testing.assert_allclose(np.asarray(out.affine), np.asarray(ref.affine), atol=1e-9)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=2e-6)


def test_oblique_images_and_other_modes_go_to_monai_itself():
    image = _image((20, 18, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1.2, 0], [0, 0, 0, 1]])
    image = MetaTensor(image.as_tensor(), affine=torch.as_tensor(oblique))
    for options in (OPTIONS, {"mode": "nearest", "padding_mode": "border"}):
        ref = Spacingd(keys="image", pixdim=(1.3, 0.8, 2.0), **options)({"image": image})["image"]
        out = AxisAlignedSpacingd(keys="image", pixdim=(1.3, 0.8, 2.0), **options)({"image": image})["image"]
        assert torch.equal(out.as_tensor(), ref.as_tensor())


def test_a_real_nifti_through_a_preset_matches_the_plain_monai_pipeline():
    """nibabel's real anatomical test image, oriented then resampled: same result either way."""
    img = nib.load(f"{data_path}/anatomical.nii")
    array = np.asarray(img.dataobj, dtype=np.float32)
    steps = [{"orientation": {"axcodes": "RAS"}}, {"spacing": {"pixdim": [1.7, 2.3, 1.1]}}]
    ours = build_preprocessing(steps)
    from monai.transforms import Compose, Orientationd

    plain = Compose([Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                     Spacingd(keys="image", pixdim=(1.7, 2.3, 1.1), **OPTIONS)])
    image = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(img.affine))
    a, b = ours({"image": image.clone()})["image"], plain({"image": image.clone()})["image"]
    assert a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-9)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4 * float(np.abs(array).max()))


def test_every_registered_step_builds_its_transform():
    from monai.transforms import MapTransform

    from medalign.prep.spacing import AxisAlignedSpacingd
    from medalign.prep.steps import get_step, list_steps
    from medalign.prep.window import FusedScaleIntensityRanged

    from medalign.prep.body_box import BodyBoxd

    assert list_steps() == ["orientation", "spacing", "window", "percentile_window", "crop_or_pad", "resize", "crop_foreground", "body_box"]
    for name in list_steps():
        cls = get_step(name).transform()
        assert issubclass(cls, MapTransform) or cls in (AxisAlignedSpacingd, FusedScaleIntensityRanged, BodyBoxd), name


def test_body_box_crops_a_real_ct_to_its_body_and_keeps_the_affine_true():
    """pydicom's CT_small (a real CT slice) in HU: the box is numpy's bounding box of HU > -500 plus
    the margin, and the cropped affine puts voxel (0, 0, 0) where the original's corner voxel was."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    array = np.stack([hu, hu, hu], axis=-1)  # (X, Y, Z): three copies of the slice
    affine = np.diag([0.66, 0.66, 5.0, 1.0])
    affine[:3, 3] = (-80.0, -90.0, 12.0)
    image = MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(affine))
    out = build_preprocessing([{"body_box": {"threshold": -500.0, "margin": 1}}])({"image": image})["image"]
    inside = np.argwhere(array > -500)
    lo = np.maximum(inside.min(0) - 1, 0)
    hi = np.minimum(inside.max(0) + 2, array.shape)
    assert 0 < (array > -500).mean() < 1 and tuple(out.shape[1:]) == tuple(hi - lo)
    np.testing.assert_array_equal(out[0].numpy(), array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    np.testing.assert_allclose(np.asarray(out.affine)[:3, 3], (affine @ np.r_[lo, 1])[:3])
    air = MetaTensor(torch.full((1, 4, 5, 6), -1000.0))  # nothing above the threshold: passed unchanged
    assert build_preprocessing([{"body_box": {}}])({"image": air})["image"].shape == (1, 4, 5, 6)


@pytest.mark.parametrize("window", [dict(a_min=-1000.0, a_max=400.0, b_min=0.0, b_max=1.0, clip=True),
                                    dict(a_min=-160.0, a_max=240.0, b_min=-1.0, b_max=1.0, clip=False),
                                    dict(a_min=0.0, a_max=255.0, b_min=1.0, b_max=0.0, clip=True)])  # inverted output range
def test_the_fused_window_equals_monai_and_leaves_its_input(window):
    from monai.transforms import ScaleIntensityRanged

    from medalign.prep.window import FusedScaleIntensityRanged

    image = _image((30, 20, 10), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0)) * 600.0
    before = image.clone()
    ref = ScaleIntensityRanged(keys="image", **window)({"image": image.clone()})["image"]
    out = FusedScaleIntensityRanged(keys="image", **window)({"image": image})["image"]
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=2e-6)
    np.testing.assert_allclose(np.asarray(out.affine), np.asarray(ref.affine))
    assert torch.equal(image.as_tensor(), before.as_tensor())  # the volume it was given is not changed
    integers = MetaTensor(torch.arange(24, dtype=torch.int32).reshape(1, 2, 3, 4))  # not float: MONAI's own transform
    a = FusedScaleIntensityRanged(keys="image", **window)({"image": integers})["image"]
    assert torch.equal(a.as_tensor(), ScaleIntensityRanged(keys="image", **window)({"image": integers})["image"].as_tensor())


def test_the_5mm_demo_preset_spends_its_grid_on_the_body(tmp_path):
    """Phantom chest CTs prepared with demo_ct_5mm: the body box fills the grid's width (with
    demo_ct's plain 8 mm field of view the body spans about 5/6 of it), at 5 mm voxels."""
    from medalign.cli.main import main as cli
    from medalign.prep.manifest import read_manifest

    raw = tmp_path / "raw"
    assert cli(["synth", "--out", str(raw), "--studies", "3", "--seed", "4"]) == 0
    widths = {}
    for preset in ("demo_ct", "demo_ct_5mm"):
        out = tmp_path / preset
        assert cli(["prep", "--images", str(raw / "images"), "--reports", str(raw / "reports.csv"), "--out", str(out), "--config", preset]) == 0
        manifest = read_manifest(out)
        volume = np.load(out / manifest.columns["volume"][0])
        body = volume > 0.357 * 255  # HU > -500 in the [-1000, 400] window
        widths[preset] = body.any(axis=(1, 2)).sum() * float(manifest.columns["spacing"][0][0])
        assert volume.shape == {"demo_ct": (48, 48, 40), "demo_ct_5mm": (64, 48, 60)}[preset]
        if preset == "demo_ct_5mm":
            assert body.any(axis=(1, 2)).mean() > 0.95
    assert abs(widths["demo_ct"] - widths["demo_ct_5mm"]) <= 16  # the same body, in mm, within two 8 mm voxels
