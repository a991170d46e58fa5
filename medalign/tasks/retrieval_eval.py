"""Retrieval metrics on an index: report -> study Recall@K where a report's own study is the match."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.tasks.retrieval import StudyIndex, top_k


def recall_at_k(query: np.ndarray, keys: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Row ``i`` of ``query`` matches row ``i`` of ``keys``; fraction of queries whose match is in the top K."""
    n = len(query)
    _, idx = top_k(query, keys, max(ks))
    hit_rank = np.array([np.where(idx[i] == i)[0][0] if i in idx[i] else np.inf for i in range(n)])
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(hit_rank < k)) if n else float("nan")
        out[f"chance@{k}"] = min(1.0, k / n) if n else float("nan")
    return out


def text_to_study_recall(index: Path, dataset: Path | None = None, modality: str | None = None, split: str = "test") -> dict[str, float]:
    """Report -> study Recall@1/5/10 on the ``split`` rows of ``index`` (chance levels beside)."""
    idx = StudyIndex(index)
    rows = [i for i, m in enumerate(idx.meta) if m.get("split") == split] or list(range(len(idx.meta)))
    return recall_at_k(idx.reports[rows], idx.studies[rows])
