"""Similar-case retrieval: an index of study and report embeddings, searched exactly by inner
product (FAISS ``IndexFlatIP`` when installed, else chunked torch matmul + top-k).

INDEX/
    index.json             model folder, model fingerprint, dataset, dimension, count
    study_embeddings.npy   (N, D) float32 unit vectors
    report_embeddings.npy  (N, D) float32 unit vectors
    meta.jsonl             one {"study_id", "split", "volume", "impression"} per row
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_save_npy, atomic_write_json, atomic_write_text


def model_fingerprint(model_dir: Path) -> str:
    """Short hash of the exported weights: an index only answers queries from the same model."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: ``(Q, k)`` scores and indices, best first."""
    k = min(k, keys.shape[0])
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(np.ascontiguousarray(keys, dtype=np.float32))
        scores, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, idx
    import torch

    s = torch.from_numpy(queries).float() @ torch.from_numpy(keys).float().T
    scores, idx = torch.topk(s, k, dim=1)
    return scores.numpy(), idx.numpy()


def build_index(out: Path, model_dir: Path, dataset: Path, study_emb: np.ndarray, report_emb: np.ndarray, meta: list[dict]) -> None:
    """Write an index folder; ``index.json`` is written last, so a partial index is never taken for whole."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)
    atomic_save_npy(out / "study_embeddings.npy", study_emb.astype(np.float32))
    atomic_save_npy(out / "report_embeddings.npy", report_emb.astype(np.float32))
    atomic_write_text(out / "meta.jsonl", "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in meta))
    atomic_write_json(out / "index.json", {
        "format": "medalign-index/1",
        "model": str(Path(model_dir).resolve()),
        "model_fingerprint": model_fingerprint(model_dir),
        "dataset": str(Path(dataset).resolve()),
        "dim": int(study_emb.shape[1]),
        "count": int(study_emb.shape[0]),
    })


class StudyIndex:
    """A loaded index: embeddings, metadata and the model it was built with."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        info_path = folder / "index.json"
        if not info_path.is_file():
            raise InputError(f"{folder}: not a medalign index (no index.json; run 'medalign index')")
        self.folder = folder
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        self.studies = np.load(folder / "study_embeddings.npy")
        self.reports = np.load(folder / "report_embeddings.npy")
        self.meta = [json.loads(line) for line in (folder / "meta.jsonl").read_text(encoding="utf-8").splitlines() if line]
        if not (len(self.meta) == self.studies.shape[0] == self.reports.shape[0] == self.info["count"]):
            raise InputError(f"{folder}: index files disagree in length (rebuild it)")

    def check_model(self, model_dir: Path) -> None:
        """Refuse queries embedded by a model other than the index's."""
        if model_fingerprint(model_dir) != self.info["model_fingerprint"]:
            raise InputError(f"{self.folder}: index was built with another model than {model_dir}")

    def search(self, query: np.ndarray, k: int, target: str = "studies") -> list[dict]:
        """Top-``k`` hits for one ``(D,)`` query against study (or report) embeddings, best first."""
        keys = self.studies if target == "studies" else self.reports
        scores, idx = top_k(query[None].astype(np.float32), keys, k)
        return [
            {"rank": r + 1, "study_id": self.meta[i]["study_id"], "score": float(s), "impression": self.meta[i].get("impression", "")}
            for r, (s, i) in enumerate(zip(scores[0], idx[0]))
        ]
