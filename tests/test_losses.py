"""Losses against float64 re-derivations written from the formulas, loop by loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medalign.losses import info_nce, siglip, soft_label_contrastive, targets_from_labels, targets_from_similarity


def _batch(b=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return img, txt


def _log_softmax_rows(z):
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def ref_soft(img, txt, t, s):
    z = s * img @ txt.T
    b = len(z)
    tn = t / t.sum(1, keepdims=True)
    tpn = t.T / t.T.sum(1, keepdims=True)
    lz, lzt = _log_softmax_rows(z), _log_softmax_rows(z.T)
    a = -sum(tn[i, j] * lz[i, j] for i in range(b) for j in range(b)) / b
    c = -sum(tpn[i, j] * lzt[i, j] for i in range(b) for j in range(b)) / b
    return 0.5 * (a + c)


def test_info_nce_matches_reference():
    img, txt = _batch()
    s = 7.5
    z = s * img.numpy() @ txt.numpy().T
    ce_rows = -np.mean([_log_softmax_rows(z)[i, i] for i in range(len(z))])
    ce_cols = -np.mean([_log_softmax_rows(z.T)[i, i] for i in range(len(z))])
    assert math.isclose(info_nce(img, txt, s).item(), 0.5 * (ce_rows + ce_cols), rel_tol=1e-12)


def test_siglip_matches_reference():
    img, txt = _batch(seed=1)
    s, b = 10.0, -3.0
    z = s * img.numpy() @ txt.numpy().T
    n = len(z)
    ref = -sum(math.log(1 / (1 + math.exp(-(1 if i == j else -1) * (z[i, j] + b)))) for i in range(n) for j in range(n)) / n
    assert math.isclose(siglip(img, txt, s, b).item(), ref, rel_tol=1e-12)


def test_soft_label_matches_reference_and_reduces_to_info_nce():
    img, txt = _batch(seed=2)
    t = torch.rand(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.01
    s = 5.0
    assert math.isclose(soft_label_contrastive(img, txt, t, s).item(), ref_soft(img.numpy(), txt.numpy(), t.numpy(), s), rel_tol=1e-12)
    eye = torch.eye(6, dtype=torch.float64)
    assert math.isclose(soft_label_contrastive(img, txt, eye, s).item(), info_nce(img, txt, s).item(), rel_tol=1e-12)


def test_targets_from_labels_reference():
    y = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0.5], [0, 0, 0]], dtype=torch.float64)
    mix = 0.7
    yn = y.numpy()
    yh = np.concatenate([yn, 1 - yn.max(1, keepdims=True)], 1)
    b = len(yh)
    p = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            cos = yh[i] @ yh[j] / (np.linalg.norm(yh[i]) * np.linalg.norm(yh[j]))
            p[i, j] = max(0.0, cos)
    p /= p.sum(1, keepdims=True)
    ref = (1 - mix) * np.eye(b) + mix * p
    got = targets_from_labels(y, mix).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # two normal studies are positives for each other; a normal and an abnormal are not
    assert got[2, 4] > 0 and got[0, 2] == 0
    np.testing.assert_allclose(got.sum(1), 1.0)


def test_targets_from_similarity_reference():
    e = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    en = e.numpy() / np.linalg.norm(e.numpy(), axis=1, keepdims=True)
    w = (en @ en.T + 1) / 2
    np.testing.assert_allclose(targets_from_similarity(e).numpy(), w / w.sum(1, keepdims=True), rtol=1e-12)


def test_losses_invariant_to_joint_permutation():
    img, txt = _batch(b=8, seed=9)
    y = (torch.rand(8, 4, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(2))
    s = 4.0
    for fn in (lambda i, t, yy: info_nce(i, t, s), lambda i, t, yy: siglip(i, t, s, -2.0),
               lambda i, t, yy: soft_label_contrastive(i, t, targets_from_labels(yy, 0.5), s)):
        assert math.isclose(fn(img, txt, y).item(), fn(img[perm], txt[perm], y[perm]).item(), rel_tol=1e-10)


def test_soft_label_gradients_flow_to_both_towers():
    img, txt = _batch(seed=4)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    y = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 0], [0, 0], [1, 1]], dtype=torch.float64)
    soft_label_contrastive(img, txt, targets_from_labels(y, 1.0), 3.0).backward()
    assert img.grad.abs().sum() > 0 and txt.grad.abs().sum() > 0


def _open_clip_losses():
    """open_clip's loss.py, loaded alone (its package __init__ needs torchvision); skip if absent."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed (make install adds it without dependencies)")
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    module_spec = importlib.util.spec_from_file_location("open_clip_loss_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("batch", [2, 7, 32])
def test_info_nce_and_siglip_equal_open_clip(batch):
    oc = _open_clip_losses()
    g = torch.Generator().manual_seed(batch)
    img = F.normalize(torch.randn(batch, 24, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(batch, 24, generator=g, dtype=torch.float64), dim=-1)
    scale, bias = torch.tensor(14.3, dtype=torch.float64), torch.tensor(-3.1, dtype=torch.float64)
    torch.testing.assert_close(info_nce(img, txt, scale), oc.ClipLoss()(img, txt, scale), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(siglip(img, txt, scale, bias), oc.SigLipLoss()(img, txt, scale, bias), rtol=1e-12, atol=1e-12)
