"""The loss family, each function its formula. ``img``, ``txt``: L2-normalised ``(B, D)``;
``s``: logit scale; ``Z = s * img @ txt.T``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(img: torch.Tensor, txt: torch.Tensor, s: torch.Tensor | float, img_all: torch.Tensor | None = None,
             txt_all: torch.Tensor | None = None, first: int = 0) -> torch.Tensor:
    """CLIP: ½ (CE(Z, I) + CE(Zᵀ, I)), mean over rows.

    Local rows (open_clip's ``local_loss``): ``img``, ``txt`` are this rank's ``(b, D)`` rows,
    ``img_all``, ``txt_all`` the global ``(B, D)`` batch and ``first`` the global index of the first
    local row; only the local rows of Z and Zᵀ are formed, ``(b, B)`` each."""
    img_all = img if img_all is None else img_all
    txt_all = txt if txt_all is None else txt_all
    z_img = s * img @ txt_all.T  # rows of Z
    z_txt = s * txt @ img_all.T  # rows of Zᵀ
    target = torch.arange(z_img.shape[0], device=z_img.device) + first
    return 0.5 * (F.cross_entropy(z_img, target) + F.cross_entropy(z_txt, target))


def siglip(img: torch.Tensor, txt: torch.Tensor, s: torch.Tensor | float, b: torch.Tensor | float,
           txt_all: torch.Tensor | None = None, first: int = 0) -> torch.Tensor:
    """SigLIP: −(1/B) Σᵢⱼ log σ(zᵢⱼ (Zᵢⱼ + b)), zᵢⱼ = +1 on the diagonal, −1 elsewhere (local rows:
    ``img`` this rank's rows i, ``txt_all`` every column j, ``first`` as in :func:`info_nce`)."""
    txt_all = txt if txt_all is None else txt_all
    z = s * img @ txt_all.T + b
    sign = -torch.ones_like(z)
    rows = torch.arange(z.shape[0], device=z.device)
    sign[rows, rows + first] = 1.0
    return -F.logsigmoid(sign * z).sum() / z.shape[0]


def soft_label_contrastive(img: torch.Tensor, txt: torch.Tensor, targets: torch.Tensor, s: torch.Tensor | float,
                           img_all: torch.Tensor | None = None, txt_all: torch.Tensor | None = None, first: int = 0) -> torch.Tensor:
    """½ (−(1/B) Σᵢⱼ Tᵢⱼ log softmax(Z)ᵢⱼ − (1/B) Σᵢⱼ T'ᵢⱼ log softmax(Zᵀ)ᵢⱼ),
    T = targets row-normalised, T' = targetsᵀ row-normalised. With targets = I it is :func:`info_nce`.
    ``targets`` is the global ``(B, B)`` matrix; local rows as in :func:`info_nce`."""
    img_all = img if img_all is None else img_all
    txt_all = txt if txt_all is None else txt_all
    z_img = s * img @ txt_all.T
    z_txt = s * txt @ img_all.T
    rows = slice(first, first + z_img.shape[0])
    t = (targets / targets.sum(dim=1, keepdim=True))[rows]
    t_prime = (targets.T / targets.T.sum(dim=1, keepdim=True))[rows]
    b = z_img.shape[0]
    i2t = -(t * F.log_softmax(z_img, dim=1)).sum() / b
    t2i = -(t_prime * F.log_softmax(z_txt, dim=1)).sum() / b
    return 0.5 * (i2t + t2i)


def targets_from_labels(y: torch.Tensor, mix: float = 1.0) -> torch.Tensor:
    """MedCLIP / Cardiac-CLIP soft targets from finding labels ``y`` ``(B, K)`` in [0, 1] (NaN: unknown).

    ŷ = [y, 1 − maxₖ y] (a "no finding" slot, over the known labels), Pᵢⱼ = max(0, cos(ŷᵢ, ŷⱼ)) over
    the entries known for both i and j, rows normalised; returns (1 − mix)·I + mix·P ``(B, B)``.
    """
    y = y if y.is_floating_point() else y.float()
    known = torch.isfinite(y)
    y = torch.nan_to_num(y, nan=0.0)
    no_finding = 1 - y.max(dim=1, keepdim=True).values if y.shape[1] else torch.ones(y.shape[0], 1, device=y.device)
    y_hat = torch.cat([y, no_finding], dim=1)
    if bool(known.all()):
        y_hat = F.normalize(y_hat, dim=1)
        p = (y_hat @ y_hat.T).clamp(min=0)
    else:  # cosine over the entries both studies know: ⟨m y_i, m y_j⟩ / (‖m y_i‖ ‖m y_j‖), m = mask_i ⊙ mask_j
        m = torch.cat([known, torch.ones_like(known[:, :1])], dim=1).to(y_hat.dtype)
        num = (y_hat * m) @ (y_hat * m).T
        sq = y_hat * y_hat * m
        norms = (sq @ m.T).clamp(min=1e-12).sqrt() * (m @ sq.T).clamp(min=1e-12).sqrt()
        p = (num / norms).clamp(min=0)
    p = p / p.sum(dim=1, keepdim=True)
    eye = torch.eye(y.shape[0], device=y.device, dtype=p.dtype)
    return (1 - mix) * eye + mix * p


def targets_from_similarity(e: torch.Tensor) -> torch.Tensor:
    """CWCL targets from frozen embeddings ``e`` ``(B, E)``: Wᵢⱼ = (cos(eᵢ, eⱼ) + 1) / 2, rows normalised."""
    e = F.normalize(e if e.is_floating_point() else e.float(), dim=1)
    w = (e @ e.T + 1) / 2
    return w / w.sum(dim=1, keepdim=True)
