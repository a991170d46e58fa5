"""Retrieval indexes: incremental updates, HNSW approximate search, torch fallback, interrupted updates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medalign.errors import InputError
from medalign.tasks.retrieval import StudyIndex, build_hnsw, top_k, torch_top_k
from medalign.tasks.retrieval_run import index_dataset


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_torch_fallback_equals_brute_force():
    keys, queries = _unit(3000, 32, 0), _unit(20, 32, 1)
    s, i = torch_top_k(queries, keys, 10, chunk=700)  # several chunks
    ref = np.argsort(-(queries @ keys.T), axis=1)[:, :10]
    assert (i == ref).all()
    np.testing.assert_allclose(s, np.take_along_axis(queries @ keys.T, ref, 1), rtol=1e-5)
    assert (top_k(queries, keys, 10)[1] == ref).all()


def test_hnsw_recall_against_exact():
    keys = _unit(20000, 64, 2)
    queries = keys[:200] + 0.05 * _unit(200, 64, 3)
    graph = build_hnsw(keys)
    graph.hnsw.efSearch = 128
    _, approx = graph.search(np.ascontiguousarray(queries, dtype=np.float32), 10)
    exact = np.argsort(-(queries @ keys.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95, recall


def test_update_adds_only_new_studies_and_equals_a_full_build(trained_run, prepared_ct, tmp_path):
    inc, full = tmp_path / "inc", tmp_path / "full"
    assert index_dataset(trained_run, prepared_ct, inc, "cpu", split="test", approximate="hnsw")[0] > 0
    added, total = index_dataset(trained_run, prepared_ct, inc, "cpu", update=True)
    n_full = index_dataset(trained_run, prepared_ct, full, "cpu", approximate="off")[1]
    assert total == n_full and added < n_full
    assert index_dataset(trained_run, prepared_ct, inc, "cpu", update=True) == (0, n_full)  # nothing new
    a, b = StudyIndex(inc), StudyIndex(full)
    assert sorted(a.ids) == sorted(b.ids) and a.search_kind == "hnsw" and b.search_kind == "exact"
    row = {sid: k for k, sid in enumerate(b.ids)}
    order = [row[sid] for sid in a.ids]
    np.testing.assert_allclose(a.studies, b.studies[order], atol=1e-5)
    np.testing.assert_allclose(a.reports, b.reports[order], atol=1e-5)
    assert a.graph("study").ntotal == total
    q = b.studies[0]
    assert a.search(q, 1)[0]["study_id"] == b.search(q, 1)[0]["study_id"] == b.ids[0]
    # the query-time breadth reaches the graph; a whole-collection breadth returns the exact ranking
    wide = StudyIndex(inc, ef_search=total)
    assert wide.graph("study").hnsw.efSearch == total
    assert [h["study_id"] for h in wide.search(q, 5)] == [h["study_id"] for h in b.search(q, 5)]
    with pytest.raises(InputError, match="ef-search"):
        StudyIndex(inc, ef_search=0)


def test_an_interrupted_update_is_read_at_the_last_complete_count(trained_run, prepared_ct, tmp_path):
    out = tmp_path / "ix"
    index_dataset(trained_run, prepared_ct, out, "cpu", split="test")
    info = json.loads((out / "index.json").read_text())
    n = info["count"]
    # the arrays and meta of an update were written, the index.json rename never happened
    studies = np.load(out / "study_embeddings.npy")
    np.save(out / "study_embeddings.npy", np.concatenate([studies, studies[:3]]))
    with open(out / "meta.jsonl", "a") as f:
        f.write("".join(json.dumps({"study_id": f"half{i}"}) + "\n" for i in range(3)))
    idx = StudyIndex(out)
    assert len(idx.ids) == n and not any(s.startswith("half") for s in idx.ids)
    added, total = index_dataset(trained_run, prepared_ct, out, "cpu", update=True)
    assert total == n + added and len(set(StudyIndex(out).ids)) == total
