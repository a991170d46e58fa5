"""Similar-case retrieval: an index of study and report embeddings, searched by inner product:
exactly (FAISS ``IndexFlatIP``, else chunked torch matmul + top-k) or, for large collections,
approximately (FAISS HNSW graphs, built once and stored).

INDEX/
    index.json             model folder, model fingerprint, dataset, dimension, count, search kind
    study_embeddings.npy   (N, D) float32 unit vectors
    report_embeddings.npy  (N, D) float32 unit vectors
    meta.jsonl             one {"study_id", "split", "volume", "impression"} per row
    study.hnsw, report.hnsw   FAISS HNSW graphs (approximate search only)

``index.json`` is written last and its ``count`` is authoritative: after an interrupted update the
longer arrays are read up to ``count`` and a rerun adds the missing studies again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_save_npy, atomic_write, atomic_write_json, atomic_write_text
from medalign.models.dual import export_fingerprint


#: collections at least this large get an approximate (HNSW) index with ``approximate="auto"``
APPROXIMATE_FROM = 100_000
HNSW_NEIGHBOURS, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 512  # efSearch 512: recall@10 0.97 at 10^6 (docs/benchmarks.md)


def torch_top_k(queries: np.ndarray, keys: np.ndarray, k: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` in plain torch, ``chunk`` keys at a time: ``(Q, k)`` scores and indices."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    k = min(k, keys.shape[0])
    best_s = best_i = None
    for start in range(0, keys.shape[0], chunk):
        s = q @ torch.from_numpy(np.ascontiguousarray(keys[start : start + chunk], dtype=np.float32)).T
        cs, ci = torch.topk(s, min(k, s.shape[1]), dim=1)
        ci = ci + start
        if best_s is None:
            best_s, best_i = cs, ci
        else:
            both_s, both_i = torch.cat([best_s, cs], 1), torch.cat([best_i, ci], 1)
            best_s, pick = torch.topk(both_s, k, dim=1)
            best_i = torch.gather(both_i, 1, pick)
    return best_s.numpy(), best_i.numpy()


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: ``(Q, k)`` scores and indices, best first (FAISS, else torch)."""
    k = min(k, keys.shape[0])
    faiss = _faiss()
    if faiss is None:
        return torch_top_k(queries, keys, k)
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(keys, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def build_hnsw(keys: np.ndarray):
    """A FAISS HNSW graph over unit vectors (inner product)."""
    faiss = _faiss()
    if faiss is None:
        raise InputError("approximate search needs faiss (pip install faiss-cpu)")
    index = faiss.IndexHNSWFlat(keys.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(np.ascontiguousarray(keys, dtype=np.float32))
    return index


def _save_faiss(index, path: Path) -> None:
    atomic_write(path, lambda p: _faiss().write_index(index, str(p)))


def build_index(out: Path, model_dir: Path, dataset: Path, study_emb: np.ndarray, report_emb: np.ndarray, meta: list[dict],
                approximate: str = "auto") -> None:
    """Write an index folder; ``index.json`` is written last, so a partial index is never taken for whole.

    ``approximate``: ``auto`` (HNSW from :data:`APPROXIMATE_FROM` studies), ``hnsw`` or ``off`` (exact only).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)
    _write_rows(out, model_dir, dataset, study_emb.astype(np.float32), report_emb.astype(np.float32), meta, _search_kind(approximate, len(meta)))


def _search_kind(approximate: str, count: int) -> str:
    if approximate not in ("auto", "hnsw", "off"):
        raise InputError(f"--approximate {approximate}: expected auto, hnsw or off")
    return "hnsw" if approximate == "hnsw" or (approximate == "auto" and count >= APPROXIMATE_FROM) else "exact"


def _write_rows(out: Path, model_dir: Path, dataset: Path, studies: np.ndarray, reports: np.ndarray, meta: list[dict], search: str,
                graphs: dict | None = None) -> None:
    atomic_save_npy(out / "study_embeddings.npy", studies)
    atomic_save_npy(out / "report_embeddings.npy", reports)
    atomic_write_text(out / "meta.jsonl", "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in meta))
    if search == "hnsw":
        graphs = graphs or {}
        for name, keys in (("study", studies), ("report", reports)):
            _save_faiss(graphs[name] if name in graphs else build_hnsw(keys), out / f"{name}.hnsw")
    atomic_write_json(out / "index.json", {
        "format": "medalign-index/1",
        "model": str(Path(model_dir).resolve()),
        "model_fingerprint": export_fingerprint(model_dir),
        "dataset": str(Path(dataset).resolve()),
        "dim": int(studies.shape[1]),
        "count": int(studies.shape[0]),
        "search": search,
    })


def update_index(folder: Path, model_dir: Path, dataset: Path, study_emb: np.ndarray, report_emb: np.ndarray, meta: list[dict]) -> int:
    """Append new studies to an existing index (same model) without re-embedding the old ones;
    HNSW graphs get the new vectors added. Returns the new count."""
    idx = StudyIndex(folder)
    idx.check_model(model_dir)
    graphs = {}
    if idx.search_kind == "hnsw":
        for name, new in (("study", study_emb), ("report", report_emb)):
            graph = idx.graph(name)
            graph.add(np.ascontiguousarray(new, dtype=np.float32))
            graphs[name] = graph
    studies = np.concatenate([idx.studies, study_emb.astype(np.float32)])
    reports = np.concatenate([idx.reports, report_emb.astype(np.float32)])
    _write_rows(Path(folder), model_dir, dataset, studies, reports, idx.meta + meta, idx.search_kind, graphs)
    return len(studies)


class StudyIndex:
    """A loaded index: embeddings, metadata and the model it was built with."""

    def __init__(self, folder: Path, ef_search: int | None = None) -> None:
        folder = Path(folder)
        if ef_search is not None and ef_search < 1:
            raise InputError(f"--ef-search {ef_search}: must be at least 1")
        #: HNSW breadth per query: higher finds more of the exact top K, slower (exact indexes ignore it)
        self.ef_search = ef_search or HNSW_EF_SEARCH
        info_path = folder / "index.json"
        if not info_path.is_file():
            raise InputError(f"{folder}: not a medalign index (no index.json; run 'medalign index')")
        self.folder = folder
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        n = self.info["count"]
        self.search_kind = self.info.get("search", "exact")
        # count is authoritative: an interrupted update may have left longer files behind
        self.studies = np.load(folder / "study_embeddings.npy")[:n]
        self.reports = np.load(folder / "report_embeddings.npy")[:n]
        self.meta = [json.loads(line) for line in (folder / "meta.jsonl").read_text(encoding="utf-8").splitlines() if line][:n]
        if not (len(self.meta) == self.studies.shape[0] == self.reports.shape[0] == n):
            raise InputError(f"{folder}: index files are shorter than index.json says (rebuild it)")
        self._graphs: dict = {}

    def graph(self, name: str):
        """The stored HNSW graph for ``study`` or ``report`` embeddings (rebuilt if it disagrees with ``count``)."""
        if name not in self._graphs:
            path = self.folder / f"{name}.hnsw"
            graph = _faiss().read_index(str(path)) if path.is_file() else None
            if graph is None or graph.ntotal != self.info["count"]:
                graph = build_hnsw(self.studies if name == "study" else self.reports)
            graph.hnsw.efSearch = self.ef_search
            self._graphs[name] = graph
        return self._graphs[name]

    @property
    def ids(self) -> list[str]:
        return [m["study_id"] for m in self.meta]

    def check_model(self, model_dir: Path) -> None:
        """Refuse queries embedded by a model other than the index's."""
        if export_fingerprint(model_dir) != self.info["model_fingerprint"]:
            raise InputError(f"{self.folder}: index was built with another model than {model_dir}")

    def search(self, query: np.ndarray, k: int, target: str = "studies") -> list[dict]:
        """Top-``k`` hits for one ``(D,)`` query against study (or report) embeddings, best first."""
        keys = self.studies if target == "studies" else self.reports
        if self.search_kind == "hnsw":
            scores, idx = self.graph("study" if target == "studies" else "report").search(query[None].astype(np.float32), min(k, len(keys)))
        else:
            scores, idx = top_k(query[None].astype(np.float32), keys, k)
        return [
            {"rank": r + 1, "study_id": self.meta[i]["study_id"], "score": float(s), "impression": self.meta[i].get("impression", "")}
            for r, (s, i) in enumerate(zip(scores[0], idx[0]))
        ]
