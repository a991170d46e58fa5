"""Property tests: the slice sorter, the labeler and the losses obey their invariances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from medalign.io.dicom_slices import Slice, volume_from_slices
from medalign.losses import soft_label_contrastive, targets_from_labels
from medalign.reports.labeler import ReportLabeler
from medalign.reports.vocabulary import load_vocabulary

LAB = ReportLabeler(load_vocabulary("chest_ct"))


def _series(n: int, iop: np.ndarray) -> list[Slice]:
    normal = np.cross(iop[:3], iop[3:])
    rng = np.random.default_rng(n)
    return [
        Slice(pixels=rng.normal(size=(4, 5)).astype(np.float32), ipp=np.array([10.0, -5.0, 2.0]) + k * 2.5 * normal,
               iop=iop, spacing=(0.7, 0.8), source=Path(f"s{k}"))
        for k in range(n)
    ]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 9), data=st.data(), oblique=st.booleans())
def test_any_file_order_gives_the_same_volume(n, data, oblique):
    iop = np.array([1.0, 0, 0, 0, np.cos(0.3), np.sin(0.3)]) if oblique else np.array([1.0, 0, 0, 0, 1, 0])
    slices = _series(n, iop)
    ref = volume_from_slices(slices)
    perm = data.draw(st.permutations(range(n)))
    got = volume_from_slices([slices[i] for i in perm])
    np.testing.assert_array_equal(got.array, ref.array)
    np.testing.assert_allclose(got.affine, ref.affine)
    # the slice axis of the affine walks from the first to the last position
    np.testing.assert_allclose(ref.affine[:3, 2], 2.5 * np.cross(iop[:3], iop[3:]) * [-1, -1, 1], atol=1e-9)


SENTENCES = [
    "No pleural effusion.", "Small right pleural effusion.", "The heart is enlarged.", "Heart size is normal.",
    "Possible nodule in the right upper lobe.", "No emphysema but there is consolidation.",
    "No consolidation.", "There is mild emphysema.", "No pneumothorax.", "A 12 mm nodule in the lingula.",
]


@settings(max_examples=60, deadline=None)
@given(picked=st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=6), data=st.data())
def test_labels_do_not_depend_on_sentence_order(picked, data):
    shuffled = data.draw(st.permutations(picked))
    assert LAB.label(" ".join(picked)) == LAB.label(" ".join(shuffled))


@settings(max_examples=60, deadline=None)
@given(first=st.sampled_from(SENTENCES), second=st.sampled_from(SENTENCES))
def test_negation_never_crosses_a_sentence(first, second):
    """The labels of two sentences together are the per-finding aggregate of each alone."""
    a, b, both = LAB.label(first), LAB.label(second), LAB.label(first + " " + second)
    for name, value in both.items():
        seen = {v for v in (a[name], b[name]) if v is not None}
        expected = 1 if 1 in seen else -1 if -1 in seen else 0 if 0 in seen else None
        assert value == expected


@settings(max_examples=25, deadline=None)
@given(b=st.integers(2, 10), seed=st.integers(0, 10_000), mix=st.floats(0, 1))
def test_soft_label_loss_invariant_to_joint_permutation(b, seed, mix):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, 6, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(b, 6, generator=g, dtype=torch.float64), dim=1)
    y = (torch.rand(b, 3, generator=g) > 0.5).double()
    perm = torch.randperm(b, generator=g)
    a = soft_label_contrastive(img, txt, targets_from_labels(y, mix), 5.0)
    c = soft_label_contrastive(img[perm], txt[perm], targets_from_labels(y[perm], mix), 5.0)
    assert torch.isclose(a, c, rtol=1e-10)
