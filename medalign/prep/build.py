"""``medalign prep``: raw studies and reports into a dataset folder.

Layout of DATASET::

    manifest.parquet     one row per prepared study (see docs/data_format.md)
    volumes/<id>.npy     preprocessed volume (X, Y, Z), values in [0, 1], memory-mappable
    records/<id>.json    per-study result, written last: its presence means "done" (resume)
    errors.jsonl         {study_id, path, reason} for each study that failed in the last run
    prep_config.yaml     the preset used; vocab.yaml the vocabulary used
    prep.log             what was chosen and why (pseudonymous keys only)

Every file is written atomically; a rerun skips studies whose record and volume exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from medalign.config import save_yaml, to_dict
from medalign.errors import InputError, MedalignError, StorageError
from medalign.io.atomic import atomic_save_npy, atomic_write, atomic_write_json, storage_error
from medalign.io.dicom import load_dicom_volumes
from medalign.io.readers import read_file, reader_for
from medalign.io.volume import Volume, mirror_to_right_eye
from medalign.io.reports import read_reports
from medalign.prep.config import PrepConfig
from medalign.reports.given_labels import GivenLabels, agreement_table, merge_labels
from medalign.reports.labeler import ReportLabeler
from medalign.reports.deid import pseudonym, redact_identifiers
from medalign.reports.report_text import clean_report, split_sections
from medalign.reports.vocabulary import Vocabulary

log = logging.getLogger(__name__)
MANIFEST = "manifest.parquet"


@dataclasses.dataclass
class PrepSummary:
    """Counts of one ``prep`` run."""

    done: int
    skipped: int
    failed: int
    reasons: dict[str, int]
    out: Path
    #: rows of the reports file whose study has no images (they are listed in prep.log)
    reports_without_images: int = 0
    #: the run's estimate of the bytes its volumes and records take (None: no fixed output size)
    bytes_needed: int | None = None
    #: studies per split in this manifest (a shard's own, with --shard)
    splits: dict[str, int] = dataclasses.field(default_factory=dict)
    #: distinct patients per split among the studies whose DICOM headers carry a PatientID
    patients: dict[str, int] = dataclasses.field(default_factory=dict)

    def split_notes(self) -> list[str]:
        """What the split counts mean for the commands that follow (an empty test or val split)."""
        notes = []
        if self.splits and not self.splits.get("test"):
            notes.append("the test split is empty: zeroshot, probe, finetune and retrieval-eval score the test split; give the "
                         "reports file a split column, or raise test_fraction in the prep preset (each split needs studies of "
                         "both classes to score a finding)")
        if self.splits and self.splits.get("val", 0) < 2:
            notes.append(f"the val split has {self.splits.get('val', 0)} studies (2 or more are needed): pretraining will not "
                         "validate, and exports get no thresholds (zeroshot --study gives scores without calls)")
        return notes

    @property
    def exit_code(self) -> int:
        """0 when every study succeeded, 3 when some failed and the rest were written."""
        return 3 if self.failed else 0


def discover_studies(images: Path) -> dict[str, Path]:
    """``{study_id: path}``: each sub-folder is a study; a bare file of a registered format
    (:mod:`medalign.io.readers`: ``NAME.nii.gz``, ``NAME.vol``, ...) is study ``NAME``.
    DICOM files lying loose in ``images`` belong to no study folder: they stop the run with one line
    (never dropped without a word) suggesting ``--group-by``; other loose files (a CSV, a README) are left alone."""
    from medalign.io.dicom import read_header

    images = Path(images)
    if not images.is_dir():
        raise InputError(f"{images}: images folder not found")
    studies: dict[str, Path] = {}
    loose: list[Path] = []
    for p in sorted(images.iterdir()):
        if p.name.startswith("."):
            continue
        reader = None if p.is_dir() else reader_for(p)
        if p.is_dir():
            studies[p.name] = p
        elif reader is not None:
            studies[reader.study_name(p)] = p
        elif p.is_file() and p.suffix.lower() not in (".csv", ".jsonl", ".json", ".txt", ".md", ".yaml", ".yml", ".log", ".xml", ".pdf"):
            loose.append(p)
    dicom = [p for p in loose if read_header(p) is not None]
    if dicom:
        raise InputError(f"{images}: {len(dicom)} DICOM file{'s' if len(dicom) > 1 else ''} lie directly in the images folder "
                         f"(e.g. {dicom[0].name}), outside any study folder: prepare this tree with --group-by study_uid "
                         "(or accession), which groups files by their headers, or move each study's files into a folder of its own")
    return studies


def load_study(path: Path, config: PrepConfig, files: list[Path] | None = None, root: Path | None = None) -> tuple[Volume, str]:
    """Read a study (NIfTI or vendor OCT file, a folder holding one, a DICOM folder, or the DICOM
    ``files`` that ``--group-by`` found for it under ``root``); returns the volume and provenance.
    OCT presets mirror left eyes to right-eye orientation. One volume: the best series, whatever
    ``series.select`` says (:func:`load_study_volumes` gives them all)."""
    config = dataclasses.replace(config, series=dataclasses.replace(config.series, select="best"))
    return load_study_volumes(path, config, files, root)[0]


def load_study_volumes(path: Path, config: PrepConfig, files: list[Path] | None = None,
                       root: Path | None = None) -> list[tuple[Volume, str]]:
    """:func:`load_study`, one ``(volume, provenance)`` per series that ``series.select`` takes
    (``all``: every full-coverage DICOM series of the study, best first)."""
    if files is not None:
        loaded = load_dicom_volumes(path, config.series, files=files, root=root)
    else:
        loaded = _read_study(path, config)
    return [_finish(volume, provenance, config) for volume, provenance in loaded]


def _finish(volume: Volume, provenance: str, config: PrepConfig) -> tuple[Volume, str]:
    """A loaded volume as preparation keeps it: left eyes mirrored when the preset says (their fundus
    image with them). A vendor OCT file's fundus image (SLO/IR) stays in ``volume.localizer``: it is
    written beside the volume, never into it."""
    if config.mirror_left_eyes and volume.laterality == "OS":
        volume = mirror_to_right_eye(volume)
        provenance += "; left eye (OS) mirrored to right-eye orientation"
    elif volume.laterality:
        provenance += f"; {volume.laterality}"
    return volume, provenance


def _read_study(path: Path, config: PrepConfig) -> list[tuple[Volume, str]]:
    """A study file or folder: the one file of a registered format it is or holds (a NIfTI, a vendor
    OCT file; ``series.select`` over the scans in it), else its DICOM series (``series.select``)."""
    if path.is_file():
        return read_file(path, path.name, config.series.select)
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]  # one listing of the folder
    if not files:
        raise InputError(f"{path}: empty study folder")
    readable = [(p, r) for p in files if (r := reader_for(p)) is not None]
    if len(readable) == 1:
        return read_file(readable[0][0], f"{path.name}/{readable[0][0].relative_to(path)}", config.series.select)
    if len(readable) > 1:
        kinds = ", ".join(sorted({r.description for _, r in readable}))
        raise InputError(f"{path}: {len(readable)} image files ({kinds}), expected one: a study is one volume file "
                         "(one eye's OCT scan, one NIfTI) or one DICOM folder")
    return load_dicom_volumes(path, config.series, files=files)


def _refuse_identifying_names(studies: dict[str, Path], id_key: bytes | None) -> None:
    """Some formats' exports are named after the patient (Zeiss Cirrus: patient id and scan date),
    and prep names studies after their files: without ``--hash-ids`` those names would reach every output."""
    if id_key is not None:
        return
    named = [(p, r) for p in studies.values() if (r := reader_for(p)) is not None and r.names_identifiers and r.names_identifiers(p.name)]
    if named:
        raise InputError(f"{named[0][0]}: {named[0][1].description} file names hold the patient id and scan date ({len(named)} such files), and "
                         "studies are named after their files; prepare them with --hash-ids KEYFILE")


def _grouped_studies(images: Path, group_by: str, report_rows: dict, report_key: str, pool: "_WorkerPool"):
    """Studies of a DICOM tree grouped by ``group_by``: ``({study_id: folder}, {study_id: files},
    reports keyed by study id, prep.log notes, early error rows)``. Reports keyed by accession
    number are matched to studies through the AccessionNumber of their files."""
    from medalign.io.dicom_groups import group_dicom_files, tainted_by_unreadable

    images = Path(images)
    if not images.is_dir():
        raise InputError(f"{images}: images folder not found")
    grouping = group_dicom_files(images, group_by, imap=pool.imap)
    if not grouping.studies and not grouping.unreadable:
        raise InputError(f"{images}: --group-by {group_by} found no DICOM files ({grouping.not_dicom} other files); "
                         "NIfTI and vendor OCT studies are prepared one per folder or file, without --group-by")
    notes = [f"--group-by {group_by}: {sum(len(g.files) for g in grouping.studies.values())} DICOM files in "
             f"{len(grouping.studies)} studies"
             + (f"; {grouping.not_dicom} files that are not DICOM ignored" if grouping.not_dicom else "")]
    errors: list[dict[str, str]] = []
    for sid, study in grouping.studies.items():
        if study.by_folder:
            notes.append(f"warning: {len(study.files)} files without {'StudyInstanceUID' if group_by == 'study_uid' else 'AccessionNumber'}"
                         f" grouped by their folder as study {sid} (series then split by series number and geometry)")
    tainted = tainted_by_unreadable(grouping)
    for sid, bad in tainted.items():
        reason = next(why for p, why in grouping.unreadable if p == bad)
        errors.append({"study_id": sid, "path": str(grouping.studies[sid].folder),
                       "reason": f"{bad.relative_to(images)}: {reason}, in the study's folder: maybe one of its slices"})
    claimed = {bad for bad in tainted.values()}
    for path, why in grouping.unreadable:
        if path not in claimed and path.parent not in {p.parent for p in claimed}:
            errors.append({"study_id": "", "path": str(path), "reason": f"{path.relative_to(images)}: {why}"})
    if report_key == "accession_number" and group_by == "study_uid":
        report_rows, more = _reports_by_study_uid(grouping.studies, report_rows)
        notes += more
    return ({sid: g.folder for sid, g in grouping.studies.items()}, {sid: g.files for sid, g in grouping.studies.items()},
            report_rows, notes, errors)


def _reports_by_study_uid(studies: dict, by_accession: dict) -> tuple[dict, list[str]]:
    """Reports keyed by accession number re-keyed by the StudyInstanceUID of the study whose files carry it."""
    rows, notes = {}, []
    owners: dict[str, list[str]] = {}
    for sid, study in studies.items():
        for accession in study.accessions:
            owners.setdefault(accession, []).append(sid)
    for accession, row in by_accession.items():
        sids = owners.get(accession, [])
        if len(sids) > 1:
            notes.append(f"warning: studies {', '.join(sorted(sids))} carry one accession number; its report is paired with none")
        elif sids:
            if len(studies[sids[0]].accessions) > 1:
                notes.append(f"warning: study {sids[0]} carries {len(studies[sids[0]].accessions)} accession numbers; "
                             "its report is not paired")
                continue
            rows[sids[0]] = row
        else:
            rows["accession:" + accession] = row  # no study carries it: reported as a report without images
    return rows, notes


def _pseudonymise_note(note: str, names: dict[str, str]) -> str:
    """A prep.log note with every study id it names replaced by its pseudonym."""
    for sid in sorted(names, key=len, reverse=True):
        if sid in note:
            note = note.replace(sid, names[sid])
    return note


def _pseudonymise(key: bytes, studies: dict, reports: dict, problems: list[str]):
    """Study and report ids replaced by :func:`pseudonym`; messages that name an id use the pseudonym.
    Returns studies, reports, problems and ``{id: pseudonym}``."""
    ids = set(studies) | set(reports)
    names = {sid: pseudonym(sid, key) for sid in ids}
    problems = [re.sub(r"^study (.+?):", lambda m: f"study {names.get(m.group(1), '<withheld>')}:", p) for p in problems]
    return {names[s]: p for s, p in studies.items()}, {names[s]: e for s, e in reports.items()}, problems, names


def _withhold_path(error: dict, study_path: Path | None) -> dict:
    """An error row without the study's folder or file path (its name is the original study id)."""
    reason = error["reason"]
    if study_path is not None:
        reason = reason.replace(str(study_path), "<study>").replace(Path(study_path).name, "<study>")
    reason = re.sub(r"[^\s():]+/", "<folder>/", reason)  # folder names of a file the reason names may identify a patient
    return {**error, "path": "<withheld: --hash-ids>", "reason": reason}


def to_cache_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    """The preprocessed ``[0, 1]`` volume in the cache's dtype (uint8: 256 levels, 0 -> 0 and 1 -> 255)."""
    if dtype == "uint8":
        return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return array.astype(dtype)


def assign_split(study_id: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """Deterministic train/val/test split from a hash of ``study_id`` (or of ``"patient:" + PatientID``)."""
    u = int(hashlib.sha256(study_id.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _safe_name(study_id: str) -> str:
    """A file name for a study id (ids with path characters are hashed)."""
    if all(c.isalnum() or c in "-_." for c in study_id) and not study_id.startswith("."):
        return study_id
    return "h" + hashlib.sha256(study_id.encode()).hexdigest()[:24]


#: MONAI pipelines built in this process, keyed by their steps (one per preset in use)
_PIPELINES: dict[str, Any] = {}


def _prepare_one(task: tuple[str, str, dict, str, list[str] | None, str]) -> dict[str, Any]:
    """Worker: load, preprocess, cache one study; returns a record or ``{"error": reason}``."""
    study_id, path, config_dict, out, files, root = task
    from medalign.config import from_dict
    from medalign.prep.transforms import apply_preprocessing, build_preprocessing

    config = from_dict(PrepConfig, config_dict)
    key = json.dumps(config.steps, sort_keys=True)
    if key not in _PIPELINES:
        _PIPELINES[key] = build_preprocessing(config.steps)
    name = _safe_name(study_id)
    prepared = []
    try:
        for volume, provenance in load_study_volumes(Path(path), config, [Path(f) for f in files] if files is not None else None, Path(root)):
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


def _stop_on_refused_write(result: dict, bar) -> None:
    """A worker's refused write ends the run: one StorageError (exit 4); what was written stays, atomically."""
    if "storage_error" in result:
        bar.close(finished=False)
        raise StorageError(result["storage_error"])


def _share_cores(workers: int) -> None:
    """Worker start: split the machine's cores between the workers (torch would give each all of them)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _is_done(out: Path, study_id: str) -> bool:
    name = _safe_name(study_id)
    record = out / "records" / f"{name}.json"
    if not (record.is_file() and (out / "volumes" / f"{name}.npy").is_file()):
        return False
    if (out / "volumes" / f"{name}.1.npy").is_file():  # several volumes: every one the record lists
        return all((out / e["volume"]).is_file() for e in json.loads(record.read_text(encoding="utf-8")).get("volumes", []))
    return True


def _labels_table(rows: list[dict], vocab: Vocabulary):
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for key in ("study_id", "split", "volume", "report", "findings", "impression", "provenance"):
        columns[key] = pa.array([r[key] for r in rows], pa.string())
    columns["series"] = pa.array([r.get("series", "") for r in rows], pa.string())
    columns["fundus"] = pa.array([r.get("fundus", "") for r in rows], pa.string())
    columns["manufacturer"] = pa.array([r.get("manufacturer", "") for r in rows], pa.string())
    columns["shape"] = pa.array([r["shape"] for r in rows], pa.list_(pa.int32()))
    columns["spacing"] = pa.array([r["spacing"] for r in rows], pa.list_(pa.float32()))
    columns["source_spacing"] = pa.array([r["source_spacing"] for r in rows], pa.list_(pa.float32()))
    for name in vocab.names:
        columns[name] = pa.array([r["labels"][name] for r in rows], pa.int8())
    return pa.table(columns)


def write_manifest(rows: list[dict], vocab: Vocabulary, out: Path, name: str = MANIFEST) -> None:
    """Write ``manifest.parquet`` (or a shard's manifest) atomically."""
    import pyarrow.parquet as pq

    table = _labels_table(rows, vocab)
    atomic_write(out / name, lambda tmp: pq.write_table(table, tmp))


def shard_of(study_id: str, n: int) -> int:
    """Which of ``n`` shards prepares ``study_id``: a hash, so every machine agrees without a shared listing."""
    return int(hashlib.sha256(b"shard:" + study_id.encode("utf-8")).hexdigest()[:12], 16) % n


def merge_shards(out: Path) -> tuple[int, int]:
    """Join ``manifest.shard-*-of-N.parquet`` and ``errors.shard-*.jsonl`` into ``manifest.parquet`` and
    ``errors.jsonl``; every shard of N must be present. Returns (rows, errors)."""
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    found = {}
    for p in out.glob("manifest.shard-*-of-*.parquet"):
        m = re.fullmatch(r"manifest\.shard-(\d+)-of-(\d+)\.parquet", p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    if not found:
        raise InputError(f"{out}: no shard manifests (manifest.shard-I-of-N.parquet) to merge")
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise InputError(f"{out}: shard manifests from different shard counts {sorted(counts)}")
    n = counts.pop()
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise InputError(f"{out}: shard {missing[0]} of {n} has not finished (no manifest.shard-{missing[0]}-of-{n}.parquet)")
    table = pa.concat_tables([pq.read_table(found[(i, n)]) for i in range(n)])
    table = table.sort_by("study_id")
    atomic_write(out / MANIFEST, lambda tmp: pq.write_table(table, tmp))
    done = set(table.column("study_id").to_pylist())
    errors = []
    for i in range(n):
        path = out / f"errors.shard-{i}-of-{n}.jsonl"
        if path.is_file():
            errors += [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["study_id"] not in done]
    atomic_write_text_lines(out / "errors.jsonl", errors)
    return table.num_rows, len(errors)


class _WorkerPool:
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
            ctx.set_forkserver_preload(["medalign.prep.build", "monai.transforms"])
            self._pool = ctx.Pool(self.workers, initializer=_share_cores, initargs=(self.workers,))
        return self._pool.imap_unordered(fn, items, chunksize=chunksize)

    def __enter__(self) -> "_WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:  # as Pool's own with-block: the other workers are terminated
            self._pool.terminate()
            self._pool.join()


def prepare_dataset(
    images: Path,
    reports: Path,
    out: Path,
    vocab: Vocabulary,
    config: PrepConfig,
    workers: int | None = None,
    progress: bool | None = None,
    shard: tuple[int, int] | None = None,
    id_key: bytes | None = None,
    given_labels: "GivenLabels | None" = None,
    group_by: str = "folder",
    columns: dict[str, str] | None = None,
) -> PrepSummary:
    """Prepare every study under ``images`` with its report into dataset folder ``out``.

    With ``shard=(i, n)`` only the studies whose id hashes to shard ``i`` of ``n`` are prepared and
    the manifest, errors and log carry a ``.shard-i-of-n`` suffix; :func:`merge_shards` joins them.
    With ``id_key`` every study id is replaced by :func:`pseudonym` (a keyed hash) before anything
    is written, and study folder paths are withheld from errors and logs.
    ``given_labels`` (:func:`~medalign.reports.given_labels.read_given_labels`) win over the labeler;
    ``prep.log`` gets a per-finding agreement table between the two.
    With ``group_by`` ``study_uid`` or ``accession`` the images folder may be any tree: its DICOM files
    are grouped into studies by that key (:func:`~medalign.io.dicom_groups.group_dicom_files`), and
    the reports file may key its rows by ``accession_number``. ``columns`` names the reports file's own
    columns (:func:`medalign.io.tables.parse_columns`).
    """
    with _WorkerPool(max(1, workers or config.workers)) as pool:
        return _prepare_dataset(images, reports, Path(out), vocab, config, pool, progress, shard, id_key, given_labels, group_by,
                                columns)


def _prepare_dataset(images: Path, reports: Path, out: Path, vocab: Vocabulary, config: PrepConfig, pool: _WorkerPool,
                     progress: bool | None, shard: tuple[int, int] | None, id_key: bytes | None,
                     given_labels: "GivenLabels | None", group_by: str, columns: dict[str, str] | None = None) -> PrepSummary:
    report_rows, problems, report_key = read_reports(reports, columns)
    notes: list[str] = []
    early_errors: list[dict[str, str]] = []
    study_files: dict[str, list[Path]] = {}
    if group_by == "folder":
        if report_key == "accession_number":
            raise InputError(f"{reports}: rows are keyed by accession_number; prepare with --group-by accession "
                             "(or study_uid) so that studies are known by their AccessionNumber")
        all_studies = discover_studies(images)
        _refuse_identifying_names(all_studies, id_key)
    else:
        all_studies, study_files, report_rows, notes, early_errors = _grouped_studies(images, group_by, report_rows, report_key, pool)
    if id_key is not None:
        all_studies, report_rows, problems, names = _pseudonymise(id_key, all_studies, report_rows, problems)
        study_files = {names[sid]: f for sid, f in study_files.items()}
        early_errors = [{**e, "study_id": names.get(e["study_id"], e["study_id"])} for e in early_errors]
        notes = [_pseudonymise_note(n, names) for n in notes]
        if given_labels is not None:
            given_labels = {pseudonym(sid, id_key): v for sid, v in given_labels.items()}
    studies = all_studies
    suffix = ""
    if shard is not None:
        i, n = shard
        studies = {sid: p for sid, p in studies.items() if shard_of(sid, n) == i}
        suffix = f".shard-{i}-of-{n}"
    out.mkdir(parents=True, exist_ok=True)
    logfile = out / f"prep{suffix}.log"
    log_lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S')} prep: {len(studies)} studies, {len(report_rows)} reports"]
    log_lines += [f"warning: {p}" for p in problems]
    log_lines += notes
    failed_early = {e["study_id"] for e in early_errors}
    errors: list[dict[str, str]] = [e for e in early_errors if e["study_id"] in studies or (not e["study_id"] and (shard is None or shard[0] == 0))]
    tasks = []
    skipped = 0
    done_earlier: list[tuple[str, Path, list[str] | None]] = []
    for sid, path in studies.items():
        files = [str(f) for f in study_files[sid]] if sid in study_files else None
        if sid in failed_early:
            continue
        if sid not in report_rows:
            errors.append({"study_id": sid, "path": str(path), "reason": "no report for this study"})
        elif report_rows[sid].get("conflict"):
            errors.append({"study_id": sid, "path": str(path), "reason": f"{Path(reports).name}: several different reports for this study_id"})
        elif not clean_report(report_rows[sid]["report"]):
            errors.append({"study_id": sid, "path": str(path), "reason": f"{Path(reports).name}: empty report"})
        elif _is_done(out, sid):
            skipped += 1
            done_earlier.append((sid, path, files))
        else:
            tasks.append((sid, str(path), to_dict(config), str(out), files, str(images)))
    orphan_reports = sorted(set(report_rows) - set(all_studies))
    for sid in orphan_reports:
        log_lines.append(f"warning: report for study {sid} has no images; ignored")
    needed = estimate_bytes(config, len(tasks))
    if needed is None:
        log_lines.append("space: not estimated (the preset's steps fix no output size); a full disk still stops the run, exit 4")
    else:
        import shutil

        free = shutil.disk_usage(out).free
        log_lines.append(f"space: about {needed / 2**20:.1f} MiB needed for {len(tasks)} studies, {free / 2**20:.1f} MiB free")
        if free < needed:
            raise StorageError(f"cannot write {out}: disk full: {free / 2**20:.1f} MiB free, about {needed / 2**20:.1f} MiB "
                               f"needed for {len(tasks)} studies; free space and rerun")
    from medalign.progress import Progress

    # progress None: a bar on a terminal, lines in a log; False: nothing
    bar = Progress("prep", len(tasks), "studies", live=progress or None, enabled=progress is not False and bool(tasks))
    bar.start_line(f"{skipped} already prepared" if skipped else "")
    results: list[dict] = []
    for res in pool.imap(_prepare_one, tasks):
        _stop_on_refused_write(res, bar)  # leaving the pool's with-block terminates the other workers
        results.append(res)
        bar.update()
    bar.close()
    done = 0
    patient_of = {res["study_id"]: res.pop("patient_hash") for res in results if "patient_hash" in res}
    for sid, path, files in done_earlier:  # a rerun checks and counts every study, not only this run's
        patient = _read_patient_hash(Path(path), files)
        if patient:
            patient_of[sid] = patient
    for res in results:
        if "error" in res:
            errors.append({"study_id": res["study_id"], "path": str(studies[res["study_id"]]), "reason": res["error"]})
        else:
            done += 1
            log_lines += [f"study {res['study_id']}: {e['provenance']}" for e in res.get("volumes") or [res]]
    # manifest from every finished record, this run's and earlier runs'
    labeler = ReportLabeler(vocab)
    rows = []
    compared = []
    for sid in sorted(studies):
        if sid not in report_rows or not _is_done(out, sid):
            continue
        record = json.loads((out / "records" / f"{_safe_name(sid)}.json").read_text(encoding="utf-8"))
        text = redact_identifiers(clean_report(report_rows[sid]["report"]))  # identifiers never reach the manifest
        sections = split_sections(text)
        patient_split = record.pop("patient_split", None)
        split = report_rows[sid].get("split") or patient_split or assign_split(sid, config.val_fraction, config.test_fraction)
        if split not in ("train", "val", "test"):
            errors.append({"study_id": sid, "path": str(reports), "reason": f"split '{split}' is not train, val or test"})
            continue
        parsed, given = labeler.label(text), (given_labels or {}).get(sid)
        if given is not None:
            compared.append((given, parsed))
        for entry in record.pop("volumes", None) or [record]:  # series.select: all: a row per volume, one report and split
            rows.append({
                **record,
                **entry,
                "split": split,
                "report": text,
                "findings": sections["findings"],
                "impression": sections["impression"],
                "labels": merge_labels(parsed, given),
            })
    patients = _patients_per_split(rows, patient_of, given_split=any(report_rows[sid].get("split") for sid in report_rows), reports=reports)
    if given_labels is not None:
        unused = len(set(given_labels) - set(all_studies))
        log_lines.append(f"given labels: {len(compared)} of {len({r['study_id'] for r in rows})} studies labelled by the labels file"
                         + (f"; {unused} rows of it name no study" if unused else "") + "; they win over the labeler")
        log_lines.append("agreement of the given labels with the report labeler (present vs anything else):")
        log_lines += agreement_table(compared, vocab.names)
    write_manifest(rows, vocab, out, f"manifest{suffix}.parquet")
    if id_key is not None:
        errors = [_withhold_path(e, studies.get(e["study_id"])) for e in errors]
    atomic_write_text_lines(out / f"errors{suffix}.jsonl", [json.dumps(e, ensure_ascii=False) for e in errors])
    save_yaml(config, out / "prep_config.yaml")
    save_yaml(vocab, out / "vocab.yaml")
    reasons: dict[str, int] = {}
    for e in errors:
        key = _reason_category(e["reason"])
        reasons[key] = reasons.get(key, 0) + 1
        log_lines.append(f"failed {e['study_id']}: {e['reason']}")
    log_lines.append(f"done {done}, skipped (already prepared) {skipped}, failed {len(errors)}; manifest rows {len(rows)}; studies per "
                     "split: " + ", ".join(f"{s} {len({r['study_id'] for r in rows if r['split'] == s})}" for s in ("train", "val", "test")))
    if patients:
        log_lines.append("patients per split (the studies whose DICOM headers carry a PatientID): "
                         + ", ".join(f"{k} {v}" for k, v in patients.items()))
    previous = logfile.read_text(encoding="utf-8") if logfile.exists() else ""
    atomic_write_text_lines(logfile, [previous.rstrip("\n")] + log_lines if previous else log_lines)
    splits = {s: len({r["study_id"] for r in rows if r["split"] == s}) for s in ("train", "val", "test")}
    return PrepSummary(done=done, skipped=skipped, failed=len(errors), reasons=reasons, out=out,
                       reports_without_images=len(orphan_reports), bytes_needed=needed, splits=splits, patients=patients)


def _read_patient_hash(path: Path, files: list[str] | None) -> str | None:
    """The SHA-256 of the PatientID of a study an earlier run prepared (one DICOM header read), or None
    (no DICOM: NIfTI, vendor OCT; or no PatientID)."""
    import pydicom

    candidates = [Path(f) for f in files] if files else ([path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()))
    for f in candidates[:16]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # noqa: BLE001 - not DICOM (a README, a NIfTI file): try the next
            continue
        patient = str(ds.get("PatientID", "") or "").strip()
        return hashlib.sha256(patient.encode("utf-8")).hexdigest() if patient else None
    return None


def _patients_per_split(rows: list[dict], patient_of: dict[str, str], given_split: bool, reports: Path) -> dict[str, int]:
    """Distinct patients per split, from the studies' hashed PatientIDs. A split column given in the
    reports file that puts one patient in two splits is refused (``InputError``): a prior in train and
    the current study in test would score the model on a patient it trained on."""
    split_of = {r["study_id"]: r["split"] for r in rows}
    splits_of: dict[str, dict[str, str]] = {}
    for sid, patient in patient_of.items():
        if sid in split_of:
            splits_of.setdefault(patient, {}).setdefault(split_of[sid], sid)
    straddling = [studies for studies in splits_of.values() if len(studies) > 1]
    if given_split and straddling:
        first = ", ".join(f"{sid} ({split})" for split, sid in sorted(straddling[0].items(), key=lambda kv: kv[1]))
        raise InputError(f"{reports}: the split column puts one patient in two splits: studies {first} share a PatientID "
                         f"({len(straddling)} patient{'s' if len(straddling) > 1 else ''} in all); keep each patient's studies "
                         "in one split, or drop the split column (prep then splits by patient)")
    if not splits_of:
        return {}
    return {s: sum(s in studies for studies in splits_of.values()) for s in ("train", "val", "test")}


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


def _reason_category(reason: str) -> str:
    """A failure reason without the file name in front and the details in brackets, for the summary counts."""
    return reason.split(" (")[0].split(": ", 1)[-1]


def atomic_write_text_lines(path: Path, lines: list[str]) -> None:
    """Write lines (newline-terminated) atomically."""
    from medalign.io.atomic import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in lines))
