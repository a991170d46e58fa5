"""Evaluation metrics shared by validation during training and the tasks (no medalign imports).

Truth arrays follow one convention everywhere: 1 positive, 0 negative, -1 uncertain and NaN
unknown; the last two are left out of the finding they belong to.
"""

from __future__ import annotations

import math

import numpy as np


def known_rows(truth_col: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: rows with a definite label (not NaN, not uncertain)."""
    return np.isfinite(truth_col) & (truth_col >= 0)


def has_both_classes(truth_col: np.ndarray) -> bool:
    """Whether the known rows of one finding hold positives and negatives (an AUROC exists)."""
    known = known_rows(truth_col)
    return bool(0 < np.sum(truth_col[known] > 0.5) < np.sum(known))


def binary_labels(truth_col: np.ndarray, score_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The known rows of one finding: 0/1 labels and their scores."""
    keep = known_rows(truth_col)
    return (truth_col[keep] > 0.5).astype(int), score_col[keep]


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The score threshold maximising sensitivity + specificity − 1 (Youden's J) on ``(y, s)``."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def validation_thresholds(scores: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Youden thresholds per finding fitted on a validation split ``(N, K)``, and for each finding
    without one the reason (its validation labels lack a class)."""
    thresholds, notes = {}, {}
    for k, name in enumerate(names):
        y, s = binary_labels(truth[:, k], scores[:, k])
        if 0 < y.sum() < len(y):
            thresholds[name] = youden_threshold(y, s)
        else:
            notes[name] = f"the validation split has {'no positive' if y.sum() == 0 else 'no negative'} for this finding: no threshold"
    return thresholds, notes


def bootstrap_auroc_ci(y: np.ndarray, s: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the AUROC, resampling studies (one-class resamples skipped).

    All ``n`` resamples at once: each resample's AUROC is the Mann-Whitney statistic
    ``(sum of the positives' ranks - P(P+1)/2) / (P * N)`` with tied scores given their mean rank,
    which is what ``sklearn.metrics.roc_auc_score`` computes."""
    from scipy.stats import rankdata

    y, s = np.asarray(y).astype(bool), np.asarray(s, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n, len(y)))
    pos = y[idx]
    n_pos = pos.sum(1)
    n_neg = len(y) - n_pos
    keep = (n_pos > 0) & (n_neg > 0)
    if not keep.any():
        return math.nan, math.nan
    ranks = rankdata(s[idx[keep]], axis=1)
    p, q = n_pos[keep].astype(np.float64), n_neg[keep].astype(np.float64)
    values = ((ranks * pos[keep]).sum(1) - p * (p + 1) / 2) / (p * q)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def finding_aurocs(scores: np.ndarray, truth: np.ndarray) -> list[float | None]:
    """AUROC per finding ``(N, K) -> K`` (scikit-learn); ``None`` where the known rows lack a class."""
    from sklearn.metrics import roc_auc_score

    out: list[float | None] = []
    for k in range(truth.shape[1]):
        y, s = binary_labels(truth[:, k], scores[:, k])
        out.append(float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None)
    return out


def macro_auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Mean of :func:`finding_aurocs` over the findings that have one (NaN when none does)."""
    values = [v for v in finding_aurocs(scores, truth) if v is not None]
    return float(np.mean(values)) if values else float("nan")


def paired_recall_at_k(query: np.ndarray, keys: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), chunk: int = 4096) -> dict[str, float]:
    """Row ``i`` of ``query`` matches row ``i`` of ``keys`` ``(N, D)``: the expected fraction of
    queries whose match ranks in the top K by inner product, ties broken at random, and the chance
    level ``K / N``. A match tied with ``t`` other keys below ``a`` keys scoring strictly higher sits
    at each rank ``a .. a + t`` with probability ``1 / (t + 1)``, so P(rank < K) = clip((K − a) / (t + 1), 0, 1):
    a collapsed model (every score equal) scores exactly chance. Exact, ``chunk`` rows at a time."""
    n = len(query)
    query, keys = np.asarray(query, dtype=np.float64), np.asarray(keys, dtype=np.float64)  # ties are true ties
    above = np.empty(n, dtype=np.int64)
    tied = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        sim = query[start : start + chunk] @ keys.T
        own = sim[np.arange(len(sim)), np.arange(start, start + len(sim))]
        above[start : start + len(sim)] = (sim > own[:, None]).sum(1)
        tied[start : start + len(sim)] = (sim == own[:, None]).sum(1) - 1  # other keys scoring exactly as the match
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(np.clip((k - above) / (tied + 1), 0.0, 1.0))) if n else float("nan")
        out[f"chance@{k}"] = min(1.0, k / n) if n else float("nan")
    return out
