"""Top-10 inner-product search over synthetic unit vectors, against FAISS ``IndexFlatIP`` (baseline)
run side by side: medalign's exact torch fallback (results must be identical) and the HNSW graph
that ``medalign index`` builds for large collections (recall@10 against exact, latency, build time).

    .venv/bin/python bench/retrieval.py [--n 100000] [--queries 1000] [--dim 512]
    .venv/bin/python bench/retrieval.py --n 1000000 --queries 1000 --ef-search 64 128 256 512 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--ef-search", type=int, nargs="+", default=None, help="HNSW efSearch values to sweep (default: medalign's)")
    a = ap.parse_args()
    import faiss

    from medalign.tasks.retrieval import HNSW_EF_SEARCH, HNSW_NEIGHBOURS, build_hnsw, torch_top_k

    rng = np.random.default_rng(0)
    # clustered like real study embeddings (studies with similar findings sit together), not uniform noise
    centers = rng.standard_normal((a.clusters, a.dim), dtype=np.float32)
    keys = centers[rng.integers(a.clusters, size=a.n)] + 0.6 * rng.standard_normal((a.n, a.dim), dtype=np.float32)  # within-cluster cosine ~0.7
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = keys[rng.choice(a.n, a.queries, replace=False)] + 0.06 * rng.standard_normal((a.queries, a.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t = time.perf_counter()
    index = faiss.IndexFlatIP(a.dim)
    index.add(keys)
    fs, fi = index.search(queries, 10)
    t_faiss = time.perf_counter() - t
    t = time.perf_counter()
    ts, ti = torch_top_k(queries, keys, 10)
    t_torch = time.perf_counter() - t
    same = float(np.mean(fi == ti))
    # where the two orders differ, the scores at that rank must be equal: a tie broken differently
    ties_only = bool(np.all(np.abs(fs - ts)[fi != ti] < 1e-6))
    print(f"exact top-10, {a.queries} queries over {a.n} x {a.dim} float32 ({a.n * a.dim * 4 / 2**20:.0f} MiB)")
    print(f"  FAISS IndexFlatIP (baseline) {t_faiss:7.2f} s  {a.queries / t_faiss:8.0f} queries/s")
    print(f"  torch chunked matmul+topk    {t_torch:7.2f} s  {a.queries / t_torch:8.0f} queries/s")
    print(f"  ratio torch/FAISS speed: {t_faiss / t_torch:.2f}x; identical indices: {same:.4f}"
          f"{' (the rest: equal scores in another order)' if same < 1 and ties_only else ''}; max score diff {np.abs(fs - ts).max():.2e}")
    t = time.perf_counter()
    graph = build_hnsw(keys)
    t_build = time.perf_counter() - t
    recall_of = lambda hits: float(np.mean([len(set(h) & set(f)) / 10 for h, f in zip(hits, fi)]))  # noqa: E731
    print(f"  HNSW graph (M={HNSW_NEIGHBOURS}) built in {t_build:.0f} s; medalign's default efSearch is {HNSW_EF_SEARCH}")
    t = time.perf_counter()
    for q in queries[:50]:
        index.search(q[None], 10)
    lat_flat = (time.perf_counter() - t) / 50
    for ef in a.ef_search or [HNSW_EF_SEARCH]:
        graph.hnsw.efSearch = ef
        t = time.perf_counter()
        _, hi = graph.search(queries, 10)
        t_hnsw = time.perf_counter() - t
        t = time.perf_counter()
        for q in queries[:200]:  # one query at a time, as a user's retrieve does
            graph.search(q[None], 10)
        lat_hnsw = (time.perf_counter() - t) / 200
        print(f"  HNSW efSearch={ef:<5} {a.queries / t_hnsw:8.0f} queries/s ({t_faiss / t_hnsw:5.1f}x FAISS flat); "
              f"recall@10 vs exact {recall_of(hi):.3f}; single query {lat_hnsw * 1000:.2f} ms (FAISS flat {lat_flat * 1000:.1f} ms)")
    print(f"  memory per million studies at D={a.dim}: {1e6 * a.dim * 4 / 2**30:.2f} GiB float32 vectors"
          f" (+ {1e6 * HNSW_NEIGHBOURS * 2 * 4 / 2**30:.2f} GiB HNSW links)")


if __name__ == "__main__":
    main()
