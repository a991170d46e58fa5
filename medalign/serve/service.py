"""What ``medalign serve`` answers with, the model and index loaded once: text search, zero-shot
scores of a study, similar cases of a study, a case's thumbnail and report. No web code here
(:mod:`medalign.serve.app` puts it behind HTTP)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np

from medalign.config import read_yaml
from medalign.data.dataset import as_unit_array
from medalign.errors import InputError, MedalignError
from medalign.models.inference import embed_texts
from medalign.prep.manifest import read_manifest
from medalign.serve.uploads import write_upload
from medalign.tasks.model_io import load_model
from medalign.tasks.montage import mid_slices, png_bytes
from medalign.tasks.raw_study import embed_raw_study, load_raw_study
from medalign.tasks.retrieval import StudyIndex
from medalign.tasks.zeroshot_run import read_thresholds, resolve_vocabulary, score_study


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system (glibc's ``malloc_trim``): a study's buffers are
    hundreds of MB, and without this the process keeps its high-water mark after every burst."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


class Service:
    """A trained model, its index and the indexed dataset's reports, loaded once; thread-safe (one
    inference at a time: the model and its memory are shared by every request)."""

    def __init__(self, checkpoint: Path, index: Path, device: str = "auto", vocab: str | None = None) -> None:
        self.index = StudyIndex(index)
        self.model, self.model_dir = load_model(Path(checkpoint), device)
        self.index.check_model(self.model_dir)
        if self.index.search_kind == "hnsw":  # loaded now, not by whichever concurrent request comes first
            self.index.graph("study")
        self.vocab = resolve_vocabulary(vocab, self.model_dir, None)
        prep = self.model_dir / "prep_config.yaml"
        self.modality = str(read_yaml(prep).get("modality", "ct")) if prep.is_file() else "ct"
        self.thresholds = read_thresholds(self.model_dir)
        self.dataset = Path(self.index.info["dataset"])
        self.row = {sid: i for i, sid in enumerate(self.index.ids)}
        self.reports: dict[str, str] = {}
        #: what the service could not load and does without (printed at start)
        self.notes: list[str] = []
        if (self.dataset / "manifest.parquet").is_file():  # the full report text; the index keeps the impression only
            manifest = read_manifest(self.dataset).studies()
            self.reports = {sid: r or "" for sid, r in zip(manifest.columns["study_id"], manifest.columns["report"])}
        else:
            self.notes.append(f"{self.dataset}: the index's dataset is not there: results carry the indexed impression, "
                              "not the whole report, and have no thumbnails")
        if not (self.model_dir / "vocab.yaml").is_file() and vocab is None:
            self.notes.append(f"{self.model_dir}: the export names no vocabulary: findings are chest_ct's (--vocab to choose)")
        self.lock = threading.Lock()

    def info(self) -> dict:
        """What the page shows about the service: modality, findings, index size."""
        return {"modality": self.modality, "findings": self.vocab.names, "studies": len(self.index.ids),
                "threshold_source": self.thresholds["source"]}

    def _hit(self, hit: dict) -> dict:
        sid = hit["study_id"]
        return {"study_id": sid, "score": round(float(hit["score"]), 4), "report": self.reports.get(sid) or hit.get("impression", ""),
                "thumbnail_url": f"/api/thumbnail/{sid}"}

    def search(self, text: str, k: int = 5) -> list[dict]:
        """The ``k`` studies whose images best match ``text``, best first."""
        if not text.strip():
            raise InputError("text: empty query")
        with self.lock:
            query = embed_texts(self.model, [text])[0]
        return [self._hit(h) for h in self.index.search(query, k, "studies")]

    def _read(self, body: bytes, modality: str | None):
        """An uploaded study, read as the model's training data was prepared; errors name no path."""
        try:
            return self._read_upload(body, modality)
        finally:
            release_freed_memory()

    def _read_upload(self, body: bytes, modality: str | None):
        with tempfile.TemporaryDirectory(prefix="medalign-serve-") as tmp:
            try:
                path = write_upload(body, Path(tmp))
                return path.name, load_raw_study(path, self.model_dir, modality)
            except MedalignError as e:
                raise InputError(str(e).replace(tmp + "/", "").replace(tmp, "upload").splitlines()[0]) from None
            except Exception as e:  # noqa: BLE001 - any reader failure on a sent file is the file's: one line, no trace
                raise InputError(f"unreadable study ({e.__class__.__name__})") from None

    def zeroshot(self, body: bytes, modality: str | None = None) -> dict:
        """The JSON ``zeroshot --study`` prints, for a study sent as bytes."""
        name, raw = self._read(body, modality)
        with self.lock:
            out = score_study(self.model, self.model_dir, self.vocab, Path(name), raw=raw)
        out["study"] = "upload"
        return out

    def zeroshot_folder(self, folder: Path, name: str) -> dict:
        """:meth:`zeroshot` for a study already on disk (pulled from the PACS into a private folder)."""
        raw = self._read_folder(folder)
        with self.lock:
            out = score_study(self.model, self.model_dir, self.vocab, Path(name), raw=raw)
        out["study"] = name
        return out

    def _read_folder(self, folder: Path):
        try:
            return load_raw_study(folder, self.model_dir, None)
        except MedalignError as e:
            raise InputError(str(e).replace(str(folder) + "/", "").replace(str(folder), "study").splitlines()[0]) from None

    def similar(self, body: bytes, k: int = 5, modality: str | None = None) -> list[dict]:
        """The ``k`` indexed studies most like a study sent as bytes."""
        _, raw = self._read(body, modality)
        return self._similar(raw, k)

    def similar_folder(self, folder: Path, k: int = 5) -> list[dict]:
        """:meth:`similar` for a study already on disk."""
        return self._similar(self._read_folder(folder), k)

    def _similar(self, raw, k: int) -> list[dict]:
        with self.lock:
            query = embed_raw_study(self.model, raw)
        return [self._hit(h) for h in self.index.search(query, k, "studies")]

    def thumbnail(self, study_id: str) -> bytes:
        """A PNG of an indexed study's middle axial slice (a B-scan for OCT)."""
        path = self.dataset / self.index.meta[self.row[study_id]]["volume"] if study_id in self.row else None
        if path is None or not path.is_file():
            raise KeyError(study_id)
        volume = as_unit_array(np.load(path, mmap_mode="r"))
        return png_bytes(mid_slices(volume)[0])
