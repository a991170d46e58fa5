"""Zero-shot diagnosis: score each finding from a positive/negative prompt pair (CT-CLIP style)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from medalign.errors import InputError
from medalign.io.atomic import atomic_write, atomic_write_json
from medalign.models import DualEncoder
from medalign.prep.vocab import Vocabulary


@torch.no_grad()
def finding_probabilities(model: DualEncoder, study_emb: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """``(N, K)``: for each finding, softmax over (positive, negative) prompt similarities × scale."""
    pairs = [f.prompt_pair() for f in vocab.findings]
    device = model.logit_scale.device
    pos = model.encode_text([p.positive for p in pairs])
    neg = model.encode_text([p.negative for p in pairs])
    img = torch.as_tensor(study_emb, device=device)
    s = model.scale()
    logits = torch.stack([s * img @ pos.T, s * img @ neg.T], dim=-1)  # (N, K, 2)
    return torch.softmax(logits, dim=-1)[..., 0].float().cpu().numpy()


def read_label_csv(path: Path, study_ids: list[str], findings: list[str]) -> np.ndarray:
    """``(N, K)`` 0/1 labels from ``study_id`` + one column per finding; missing values NaN."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = {r["study_id"]: r for r in csv.DictReader(f) if r.get("study_id")}
    out = np.full((len(study_ids), len(findings)), np.nan, dtype=np.float32)
    for i, sid in enumerate(study_ids):
        row = rows.get(sid)
        for k, name in enumerate(findings):
            if row is not None and row.get(name, "") not in ("", None):
                try:
                    out[i, k] = float(row[name])
                except ValueError:
                    raise InputError(f"{path}: study {sid}, column '{name}': not a number ({row[name]!r})") from None
    return out


def evaluate(scores: np.ndarray, truth: np.ndarray, findings: list[str]) -> dict:
    """Per-finding AUROC / average precision and their macro means over findings with both classes.

    ``truth``: 1 positive, 0 negative, NaN or -1 (uncertain) excluded for that finding.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    per = {}
    for k, name in enumerate(findings):
        y = truth[:, k]
        keep = np.isfinite(y) & (y >= 0)
        yk, sk = (y[keep] > 0.5).astype(int), scores[keep, k]
        n_pos = int(yk.sum())
        entry = {"n": int(keep.sum()), "n_positive": n_pos}
        if 0 < n_pos < len(yk):
            entry["auroc"] = float(roc_auc_score(yk, sk))
            entry["average_precision"] = float(average_precision_score(yk, sk))
        else:
            entry["auroc"] = None
        per[name] = entry
    aurocs = [v["auroc"] for v in per.values() if v["auroc"] is not None]
    aps = [v["average_precision"] for v in per.values() if v.get("average_precision") is not None]
    return {
        "macro_auroc": float(np.mean(aurocs)) if aurocs else math.nan,
        "macro_average_precision": float(np.mean(aps)) if aps else math.nan,
        "n_findings_evaluated": len(aurocs),
        "per_finding": per,
    }


def plot_roc(scores: np.ndarray, truth: np.ndarray, findings: list[str], metrics: dict, path: Path) -> None:
    """ROC curve per evaluated finding in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6, 6))
    for k, name in enumerate(findings):
        if metrics["per_finding"][name]["auroc"] is None:
            continue
        y = truth[:, k]
        keep = np.isfinite(y) & (y >= 0)
        fpr, tpr, _ = roc_curve((y[keep] > 0.5).astype(int), scores[keep, k])
        ax.plot(fpr, tpr, label=f"{name} ({metrics['per_finding'][name]['auroc']:.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"Zero-shot ROC (macro AUROC {metrics['macro_auroc']:.3f})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_scores_csv(path: Path, study_ids: list[str], scores: np.ndarray, findings: list[str]) -> None:
    """Per-study probabilities, one column per finding."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["study_id", *findings])
            for sid, row in zip(study_ids, scores):
                w.writerow([sid, *(f"{v:.9g}" for v in row)])  # float32 round-trips exactly

    atomic_write(path, _write)


def write_metrics(path: Path, metrics: dict) -> None:
    """``metrics.json``, atomically."""
    atomic_write_json(path, metrics)
