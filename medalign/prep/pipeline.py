"""The per-study work of ``prep`` and the processes that do it: read, preprocess and cache one study
(volumes first, its record last: the record's presence means done), a pool of worker processes, and
the disk estimate."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import InputError, MedalignError, StorageError
from medalign.io.atomic import atomic_save_npy, atomic_write_json, storage_error
from medalign.prep.config import PrepConfig
from medalign.prep.splits import assign_split
from medalign.prep.studies import load_study_volumes


def to_cache_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """The preprocessed ``[0, 1]`` volume in the cache's dtype (uint8: 256 levels, 0 -> 0 and 1 -> 255)."""
    if dtype == "uint8":
        scaled = np.clip(array, 0.0, 1.0)  # a fresh array, scaled and rounded in place (no temporaries at 480x480x240)
        scaled *= 255.0
        return np.rint(scaled, out=scaled).astype(np.uint8)
    return array.astype(dtype)


def safe_name(study_id: str) -> str:
    """A file name for a study id (ids with path characters are hashed)."""
    if all(c.isalnum() or c in "-_." for c in study_id) and not study_id.startswith("."):
        return study_id
    return "h" + hashlib.sha256(study_id.encode()).hexdigest()[:24]


#: MONAI pipelines built in this process, keyed by their steps (one per preset in use)
_PIPELINES: dict[str, Any] = {}


def prepare_one(task: tuple[str, str, PrepConfig, str, list[str] | None, str, str]) -> dict[str, Any]:
    """Worker: load, preprocess, cache one study; returns a record or ``{"error": reason}``. ``task``:
    (study id, path, the checked preset, dataset folder, the study's files (``--group-by``, a layout) or
    None, images folder, layout name)."""
    study_id, path, config, out, files, root, layout = task
    from medalign.prep.transforms import apply_preprocessing, build_preprocessing

    key = json.dumps(config.steps, sort_keys=True)
    if key not in _PIPELINES:
        _PIPELINES[key] = build_preprocessing(config.steps)
    name = safe_name(study_id)
    prepared = []
    try:
        for volume, provenance in load_study_volumes(Path(path), config, [Path(f) for f in files] if files is not None else None, Path(root),
                                                       layout):
            array, affine = apply_preprocessing(volume, _PIPELINES[key])
            if not np.isfinite(array).all():
                raise InputError("preprocessing produced NaN or infinite values")
            prepared.append((to_cache_dtype(array, config.cache_dtype), affine, volume, provenance))
    except MedalignError as e:
        return {"study_id": study_id, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - one bad study must not stop the batch
        return {"study_id": study_id, "error": f"{e.__class__.__name__}: {e}"}
    try:
        return _write_study(Path(out), name, prepared, study_id, config)
    except OSError as e:  # a refused write stops the whole run (the parent says so once): not this study's fault
        refused = storage_error(Path(out) / "volumes" / f"{name}.npy", e)
        if refused is None:
            raise
        return {"study_id": study_id, "storage_error": str(refused)}
    except StorageError as e:
        return {"study_id": study_id, "storage_error": str(e)}


def _write_study(out: Path, name: str, prepared: list, study_id: str, config: PrepConfig) -> dict[str, Any]:
    """Write the study's volumes (``volumes/<name>.npy``, then ``<name>.1.npy``, ... under
    ``series.select: all``), then its record (its presence means done: written last); returns the
    record: the first volume's entry, and ``volumes`` listing every entry when there are several."""
    entries = []
    for k, (cached, affine, volume, provenance) in enumerate(prepared):
        rel = f"volumes/{name}.npy" if k == 0 else f"volumes/{name}.{k}.npy"
        atomic_save_npy(out / rel, cached)
        fundus, fundus_rel = volume.localizer, ""
        if fundus is not None:  # a vendor OCT file's SLO/IR image: an optional second input beside the volume
            fundus_rel = rel[: -len(".npy")] + ".fundus.npy"
            atomic_save_npy(out / fundus_rel, _unit_image(fundus))
        entries.append({
            "volume": rel,
            "fundus": fundus_rel,
            "series": volume.series_key,
            "shape": list(cached.shape),
            "spacing": [round(float(v), 4) for v in np.linalg.norm(affine[:3, :3], axis=0)],
            "source_shape": list(volume.array.shape),
            "source_spacing": [round(v, 4) for v in volume.spacing],
            "provenance": provenance,
            "manufacturer": volume.manufacturer,
        })
    record = {"study_id": study_id, **entries[0]}
    if len(entries) > 1:
        record["volumes"] = entries
    patient = prepared[0][2].patient_id
    if patient:  # the split of the patient, never the PatientID: studies of one patient never straddle train and test
        record["patient_split"] = assign_split("patient:" + patient, config.val_fraction, config.test_fraction)
    atomic_write_json(out / "records" / f"{name}.json", record)
    if patient:  # back to the parent in memory only, hashed: it counts patients and checks a given split column
        return {**record, "patient_hash": hashlib.sha256(patient.encode("utf-8")).hexdigest()}
    return record


def _unit_image(image: np.ndarray) -> np.ndarray:
    """A fundus image ``(H, W)`` as float16 in [0, 1] (8-bit images divided by 255, others by their maximum)."""
    image = np.nan_to_num(np.asarray(image, dtype=np.float32))
    scale = 255.0 if image.max(initial=0.0) <= 255.0 else float(image.max())
    return np.clip(image / max(scale, 1e-12), 0.0, 1.0).astype(np.float16)


def stop_on_refused_write(result: dict, bar) -> None:
    """A worker's refused write ends the run: one StorageError (exit 4); what was written stays, atomically."""
    if "storage_error" in result:
        bar.close(finished=False)
        raise StorageError(result["storage_error"])


def _share_cores(workers: int) -> None:
    """Worker start: split the machine's cores between the workers (torch would give each all of them)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def is_done(out: Path, study_id: str) -> bool:
    name = safe_name(study_id)
    record = out / "records" / f"{name}.json"
    if not (record.is_file() and (out / "volumes" / f"{name}.npy").is_file()):
        return False
    if (out / "volumes" / f"{name}.1.npy").is_file():  # several volumes: every one the record lists
        return all((out / e["volume"]).is_file() for e in json.loads(record.read_text(encoding="utf-8")).get("volumes", []))
    return True


class WorkerPool:
    """The prep worker processes, started on first use; with one worker, everything runs in this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = None

    def imap(self, fn, items, chunksize: int = 1):
        """``fn`` over ``items`` in any order (in order, here, with one worker)."""
        if self.workers == 1 or len(items) <= 1:
            return map(fn, items)
        if self._pool is None:
            # forkserver: workers fork from a clean server, never from a parent whose torch/OpenMP
            # threads are running (a plain fork can deadlock there)
            ctx = mp.get_context("forkserver")
            # MONAI's import takes seconds: done once in the server, every worker forks with it loaded
            ctx.set_forkserver_preload(["medalign.prep.pipeline", "monai.transforms"])
            self._pool = ctx.Pool(self.workers, initializer=_share_cores, initargs=(self.workers,))
        return self._pool.imap_unordered(fn, items, chunksize=chunksize)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:  # as Pool's own with-block: the other workers are terminated
            self._pool.terminate()
            self._pool.join()


def estimate_bytes(config: PrepConfig, studies: int) -> int | None:
    """Bytes ``studies`` cached volumes and records take under ``config``'s fixed output size
    (``crop_or_pad`` or ``resize``); ``None`` when the steps fix no size."""
    size = None
    for step in config.steps:
        for name in ("crop_or_pad", "resize"):
            if name in step:
                size = step[name].get("spatial_size")
    if not size:
        return None
    itemsize = np.dtype(config.cache_dtype).itemsize
    return studies * (int(np.prod(size)) * itemsize + 128 + 4096)  # .npy header, record and file-system slack
