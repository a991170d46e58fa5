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

    assert list_steps() == ["orientation", "spacing", "window", "percentile_window", "crop_or_pad", "resize", "crop_foreground"]
    for name in list_steps():
        cls = get_step(name).transform()
        assert issubclass(cls, MapTransform) or cls in (AxisAlignedSpacingd, FusedScaleIntensityRanged), name


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
