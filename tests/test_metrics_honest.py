"""Metrics that cannot flatter a broken model: ties never count in a query's favour, thresholds are
never fitted on the split being scored, one-class probe subsamples are skipped, JSON has no NaN."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from medalign.io.atomic import atomic_write_json
from medalign.metrics import paired_recall_at_k
from medalign.tasks.probe import run_probes
from medalign.tasks.retrieval_eval import map_at_k, relevance_matrix
from medalign.tasks.zeroshot import evaluate


def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_collapsed_model_scores_chance_recall():
    same = np.ones((100, 8), np.float32)
    got = paired_recall_at_k(same, same, ks=(1, 5, 10))
    assert got["recall@1"] == pytest.approx(0.01) and got["recall@5"] == pytest.approx(0.05) and got["recall@10"] == pytest.approx(0.10)
    assert got["recall@1"] == pytest.approx(got["chance@1"])


def test_recall_with_ties_equals_random_tie_breaking():
    """Reference: the same rankings with ties broken by fresh random keys, averaged (Monte Carlo)."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 2, size=(30, 3)).astype(np.float64)  # coarse vectors: many tied scores
    keys = rng.integers(0, 2, size=(30, 3)).astype(np.float64)
    sims = q @ keys.T
    hits = {1: [], 5: []}
    for _ in range(4000):
        noise = rng.random(sims.shape)
        order = np.lexsort((noise, -sims), axis=1)
        rank = np.argmax(order == np.arange(30)[:, None], axis=1)
        for k in hits:
            hits[k].append(np.mean(rank < k))
    got = paired_recall_at_k(q, keys, ks=(1, 5))
    for k in hits:
        assert got[f"recall@{k}"] == pytest.approx(np.mean(hits[k]), abs=0.01)


def test_a_collapsed_model_scores_chance_map():
    rng = np.random.default_rng(1)
    positive = rng.random((60, 3)) < 0.3
    got, chance = map_at_k(np.ones((60, 4)), relevance_matrix(positive), k=10)
    assert got == pytest.approx(chance, abs=0.02)
    # and a model that ranks by the labels themselves scores far above it
    perfect, _ = map_at_k(positive.astype(float) + 1e-3 * rng.random((60, 3)), relevance_matrix(positive), k=10)
    assert perfect > chance + 0.2


def test_retrieval_eval_reports_chance_for_a_collapsed_index(trained_run, prepared_ct, tmp_path):
    """The outside check: every embedding of an index made equal; retrieval-eval must say chance."""
    from medalign.cli.main import main as cli

    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index), "--approximate", "off"]) == 0
    for name in ("study_embeddings.npy", "report_embeddings.npy"):
        emb = np.load(index / name)
        np.save(index / name, np.ones_like(emb) / np.sqrt(emb.shape[1]))
    out = tmp_path / "ev"
    assert cli(["retrieval-eval", "--index", str(index), "--data", str(prepared_ct), "--split", "all", "--out", str(out)]) == 0
    m = _strict_json(out / "metrics.json")
    for k in (1, 5, 10):
        assert m["report_to_study"][f"recall@{k}"] == pytest.approx(m["report_to_study"][f"chance@{k}"])
    assert m["study_to_study"]["map@10"] == pytest.approx(m["study_to_study"]["chance_map@10"], abs=0.03)


def test_no_threshold_is_fitted_on_the_scored_split():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80).astype(float)
    scores = np.stack([y * 0.5 + rng.random(80) * 0.6] * 2, axis=1)
    m = evaluate(scores, np.stack([y, y], axis=1), ["a", "b"], thresholds={"a": 0.5}, n_bootstrap=20,
                 threshold_notes={"b": "the validation split has no positive for this finding: no threshold"})
    a, b = m["per_finding"]["a"], m["per_finding"]["b"]
    assert a["threshold"] == 0.5 and a["sensitivity"] == pytest.approx(np.mean(scores[y == 1, 0] >= 0.5))
    assert b["auroc"] is not None and b["threshold"] is None and b["sensitivity"] is None and "no positive" in b["threshold_note"]
    assert m["macro_sensitivity"] == pytest.approx(a["sensitivity"])  # b is not averaged in


def test_one_class_probe_subsamples_are_skipped_and_counted():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 4))
    y = np.zeros((40, 1))
    y[:20, 0] = 1
    x[:20] += 2.0
    # training rows sorted so that a 10% subsample (4 rows) may hold one class only
    result = run_probes(x, y, x, y, ["f"], [0.1, 1.0], seeds=5)
    full = result["1.0"]
    assert full["scorable"]["f"] == "5 of 5" and full["per_finding"]["f"] > 0.9
    small = result["0.1"]
    n_ok = int(small["scorable"]["f"].split()[0])
    from medalign.tasks.probe import subsample

    one_class = sum(len(set(y[subsample(40, 0.1, seed=s), 0])) < 2 for s in range(5))
    assert n_ok == 5 - one_class


def test_json_is_written_without_nan(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"macro_auroc": math.nan, "per": [1.0, float("inf"), {"x": np.float64("nan")}]})
    assert _strict_json(tmp_path / "m.json") == {"macro_auroc": None, "per": [1.0, None, {"x": None}]}
