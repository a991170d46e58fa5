"""Retrieval metrics on an index.

- report -> study and study -> report Recall@K: a report's own study is the one match (CT-CLIP);
- study -> study mAP@10: a hit is relevant when it shares at least one of the query's positive
  findings (a query without findings: when the hit has none either); the query is left out.
Chance levels: K / N for recall; for mAP@10 the mean over 50 random rankings of the same sets.
Tied similarities never count in a query's favour: recall takes the expected rank under random
tie-breaking, mAP averages random tie-breaks (a collapsed model scores chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_write_json
from medalign.metrics import paired_recall_at_k
from medalign.tasks.retrieval import StudyIndex


def relevance_matrix(positive: np.ndarray) -> np.ndarray:
    """``(N, N)`` bool: j is relevant to i when they share a positive finding, or both have none."""
    pos = positive.astype(bool)
    shared = (pos.astype(np.int32) @ pos.T.astype(np.int32)) > 0
    normal = ~pos.any(axis=1)
    rel = shared | (normal[:, None] & normal[None, :])
    np.fill_diagonal(rel, False)
    return rel


def average_precision_at_k(ranked_relevance: np.ndarray, n_relevant: int, k: int = 10) -> float:
    """AP@k = (1 / min(R, k)) Σ_{r ≤ k} P@r · rel_r for one ranking (0 when nothing is relevant)."""
    rel = ranked_relevance[:k].astype(float)
    if n_relevant == 0:
        return 0.0
    precision = np.cumsum(rel) / (np.arange(len(rel)) + 1)
    return float((precision * rel).sum() / min(n_relevant, k))


def map_at_k(emb: np.ndarray, relevant: np.ndarray, k: int = 10, seed: int = 0, draws: int = 50) -> tuple[float, float]:
    """Study -> study mAP@k over all queries (self excluded) and its chance level (the mean over
    ``draws`` random rankings). Tied similarities are ranked in random order and a query with ties
    is averaged over ``draws`` tie-breaks (its expected AP), so a collapsed model scores chance,
    not the order the studies happen to be stored in."""
    n = len(emb)
    emb = np.asarray(emb, dtype=np.float64)  # float64: a tie is a true tie, not a rounding coincidence
    sims = emb @ emb.T
    rng = np.random.default_rng(seed)
    aps = []
    for i in range(n):
        others = np.delete(np.arange(n), i)
        s = sims[i, others]
        n_rel = int(relevant[i].sum())
        if len(np.unique(s)) == len(s):
            aps.append(average_precision_at_k(relevant[i, others[np.argsort(-s)]], n_rel, k))
        else:  # lexsort: by score, ties by a fresh random key each draw
            aps.append(float(np.mean([average_precision_at_k(relevant[i, others[np.lexsort((rng.random(len(s)), -s))]], n_rel, k)
                                      for _ in range(draws)])))
    chance = []
    for _ in range(draws):
        for i in range(n):
            others = np.delete(np.arange(n), i)
            chance.append(average_precision_at_k(relevant[i, rng.permutation(others)], int(relevant[i].sum()), k))
    return float(np.mean(aps)), float(np.mean(chance))


def evaluate_retrieval(index: Path, dataset: Path, out: Path, split: str = "test", labels: Path | None = None,
                       id_key: bytes | None = None, protocol: str = "medalign") -> dict:
    """Write ``out/metrics.json`` with report->study, study->report Recall@1/5/10 and study->study mAP@10;
    ``protocol="ct-clip"`` adds CT-CLIP's report->volume Recall@5/10/50/100 and volume->volume score
    (:mod:`medalign.tasks.protocols`) under ``"protocol"``."""
    if protocol not in ("medalign", "ct-clip"):
        raise InputError(f"--protocol {protocol}: expected medalign or ct-clip")
    from medalign.prep.manifest import read_manifest
    from medalign.tasks.zeroshot import read_label_csv

    idx = StudyIndex(index)
    manifest = read_manifest(dataset).studies()
    rows = [i for i, m in enumerate(idx.meta) if split == "all" or m.get("split") == split]
    if len(rows) < 2:
        raise InputError(f"{index}: fewer than 2 indexed studies in split '{split}' (index the whole dataset)")
    ids = [idx.meta[i]["study_id"] for i in rows]
    if labels is not None:
        y = read_label_csv(labels, ids, manifest.findings, id_key)
    else:
        pos = {sid: k for k, sid in enumerate(manifest.columns["study_id"])}
        missing = [sid for sid in ids if sid not in pos]
        if missing:
            raise InputError(f"{dataset}: study {missing[0]} of the index is not in this dataset")
        y = manifest.labels()[[pos[sid] for sid in ids]]
    positive = np.nan_to_num(y, nan=0.0) == 1
    studies, reports = idx.studies[rows], idx.reports[rows]
    report_of = dict(zip(manifest.columns["study_id"], manifest.columns["report"]))
    with_reports = all((report_of.get(sid) or "").strip() for sid in ids)  # RAD-ChestCT publishes none: no report recall
    r2s, s2r = (paired_recall_at_k(reports, studies), paired_recall_at_k(studies, reports)) if with_reports else (None, None)
    m, chance = map_at_k(studies, relevance_matrix(positive), 10)
    metrics = {
        "split": split,
        "n_studies": len(rows),
        "report_to_study": r2s,  # recall@K with chance@K beside
        "study_to_report": s2r,
        "study_to_study": {"map@10": m, "chance_map@10": chance},
        "relevance": "study->study: shares a positive finding with the query (both normal counts)",
    }
    if not with_reports:
        metrics["note"] = "some studies have no report (a data set published without them): report<->study recall not computed"
    if protocol == "ct-clip":
        from medalign.tasks.protocols import ct_clip_report_to_volume_recall, ct_clip_volume_to_volume

        metrics["protocol"] = {"protocol": "ct-clip", "report_to_volume_recall": ct_clip_report_to_volume_recall(reports, studies) if with_reports else None,
                               "volume_to_volume": ct_clip_volume_to_volume(studies, positive.astype(int)),
                               "note": "as CT-CLIP's scripts compute them: the query itself stays among the candidates; "
                                       "ties in index order; see medalign.tasks.protocols"}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
