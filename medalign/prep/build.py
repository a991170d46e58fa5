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
import json
import logging
import time
from pathlib import Path

from medalign.config import save_yaml
from medalign.errors import InputError, StorageError
from medalign.io.atomic import atomic_write_text_lines
from medalign.io.reports import read_reports
from medalign.prep.config import PrepConfig
from medalign.prep.manifest import write_manifest
from medalign.prep.pipeline import WorkerPool, estimate_bytes, is_done, prepare_one, safe_name, stop_on_refused_write
from medalign.prep.pseudonyms import pseudonym, pseudonymise, pseudonymise_note, withhold_path
from medalign.prep.shards import shard_of
from medalign.prep.splits import assign_split, patients_per_split, read_patient_hash
from medalign.prep.studies import discover_studies, grouped_studies, refuse_identifying_names
from medalign.reports.deid import redact_identifiers
from medalign.reports.given_labels import GivenLabels, agreement_table, merge_labels
from medalign.reports.labeler import ReportLabeler
from medalign.reports.report_text import clean_report, split_sections
from medalign.reports.vocabulary import Vocabulary

log = logging.getLogger(__name__)


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



def prepare_dataset(
    images: Path,
    reports: Path | None,
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
    layout: str = "folder",
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
    columns (:func:`medalign.io.tables.parse_columns`). ``layout`` other than ``folder`` reads a
    published data set in its own tree (:mod:`medalign.prep.layouts`): its studies, reports, released
    labels (as given labels, unless ``given_labels`` are passed) and splits; ``reports`` is then None.
    """
    with WorkerPool(max(1, workers or config.workers)) as pool:
        return _prepare_dataset(images, reports, Path(out), vocab, config, pool, progress, shard, id_key, given_labels, group_by,
                                columns, layout)


def _prepare_dataset(images: Path, reports: Path | None, out: Path, vocab: Vocabulary, config: PrepConfig, pool: WorkerPool,
                     progress: bool | None, shard: tuple[int, int] | None, id_key: bytes | None,
                     given_labels: "GivenLabels | None", group_by: str, columns: dict[str, str] | None = None,
                     layout: str = "folder") -> PrepSummary:
    notes: list[str] = []
    early_errors: list[dict[str, str]] = []
    study_files: dict[str, list[Path]] = {}
    layout_patients: dict[str, str | None] = {}  # a layout's patients, hashed (a rerun counts them without reading files)
    reportless = False  # a data set published without reports: evaluation only, labels the released ones
    if layout != "folder":
        from medalign.prep.layouts import get_layout

        if group_by != "folder" or reports is not None:
            raise InputError(f"--layout {layout} reads the data set's own tree and reports: drop --group-by and --reports")
        chosen = get_layout(layout)
        found = chosen.find(images, config, vocab)
        all_studies, study_files, report_rows, notes, problems = found.studies, found.files, found.reports, found.notes, []
        given_labels = given_labels if given_labels is not None else found.given_labels
        reports = found.reports_source
        reportless = not found.reports_published
        layout_patients = {sid: chosen.patient_hash(sid) for sid in all_studies}
    elif reports is None:
        raise InputError("--reports is required (except with --layout or --merge)")
    else:
        report_rows, problems, report_key = read_reports(reports, columns)
        if group_by == "folder":
            if report_key == "accession_number":
                raise InputError(f"{reports}: rows are keyed by accession_number; prepare with --group-by accession "
                                 "(or study_uid) so that studies are known by their AccessionNumber")
            all_studies = discover_studies(images)
            refuse_identifying_names(all_studies, id_key)
        else:
            all_studies, study_files, report_rows, notes, early_errors = grouped_studies(images, group_by, report_rows, report_key,
                                                                                         pool.imap)
    if id_key is not None:
        all_studies, report_rows, problems, names = pseudonymise(id_key, all_studies, report_rows, problems)
        study_files = {names[sid]: f for sid, f in study_files.items()}
        layout_patients = {names[sid]: h for sid, h in layout_patients.items()}
        early_errors = [{**e, "study_id": names.get(e["study_id"], e["study_id"])} for e in early_errors]
        notes = [pseudonymise_note(n, names) for n in notes]
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
        elif not reportless and not clean_report(report_rows[sid]["report"]):
            errors.append({"study_id": sid, "path": str(path), "reason": f"{Path(reports).name}: empty report"})
        elif is_done(out, sid):
            skipped += 1
            done_earlier.append((sid, path, files))
        else:
            tasks.append((sid, str(path), config, str(out), files, str(images), layout))
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
    for res in pool.imap(prepare_one, tasks):
        stop_on_refused_write(res, bar)  # leaving the pool's with-block terminates the other workers
        results.append(res)
        bar.update()
    bar.close()
    done = 0
    patient_of = {res["study_id"]: res.pop("patient_hash") for res in results if "patient_hash" in res}
    patient_of.update({sid: h for sid, h in layout_patients.items() if h})  # a layout's own patient column (RAD-ChestCT's MRN_DEID)
    for sid, path, files in done_earlier:  # a rerun checks and counts every study, not only this run's
        patient = layout_patients.get(sid) if layout != "folder" else read_patient_hash(Path(path), files)
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
        if sid not in report_rows or not is_done(out, sid):
            continue
        record = json.loads((out / "records" / f"{safe_name(sid)}.json").read_text(encoding="utf-8"))
        text = redact_identifiers(clean_report(report_rows[sid]["report"]))  # identifiers never reach the manifest
        sections = split_sections(text)
        patient_split = record.pop("patient_split", None)
        split = report_rows[sid].get("split") or patient_split or assign_split(sid, config.val_fraction, config.test_fraction)
        if split not in ("train", "val", "test"):
            errors.append({"study_id": sid, "path": str(reports), "reason": f"split '{split}' is not train, val or test"})
            continue
        parsed, given = labeler.label(text), (given_labels or {}).get(sid)
        if given is not None and not reportless:  # no report, nothing to agree with
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
    patients = patients_per_split(rows, patient_of, given_split=any(report_rows[sid].get("split") for sid in report_rows), reports=reports)
    if given_labels is not None:
        unused = len(set(given_labels) - set(all_studies))
        labelled = sum(1 for sid in {r["study_id"] for r in rows} if sid in given_labels)
        log_lines.append(f"given labels: {labelled} of {len({r['study_id'] for r in rows})} studies labelled by the labels file"
                         + (f"; {unused} rows of it name no study" if unused else "") + "; they win over the labeler")
        if compared:
            log_lines.append("agreement of the given labels with the report labeler (present vs anything else):")
            log_lines += agreement_table(compared, vocab.names)
    write_manifest(rows, vocab.names, out, f"manifest{suffix}.parquet")
    if id_key is not None:
        errors = [withhold_path(e, studies.get(e["study_id"])) for e in errors]
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
        log_lines.append("patients per split (the studies whose patient is known: a DICOM PatientID, a layout's patient): "
                         + ", ".join(f"{k} {v}" for k, v in patients.items()))
    previous = logfile.read_text(encoding="utf-8") if logfile.exists() else ""
    atomic_write_text_lines(logfile, [previous.rstrip("\n")] + log_lines if previous else log_lines)
    splits = {s: len({r["study_id"] for r in rows if r["split"] == s}) for s in ("train", "val", "test")}
    return PrepSummary(done=done, skipped=skipped, failed=len(errors), reasons=reasons, out=out,
                       reports_without_images=len(orphan_reports), bytes_needed=needed, splits=splits, patients=patients)



def _reason_category(reason: str) -> str:
    """A failure reason without the file name in front and the details in brackets, for the summary counts."""
    return reason.split(" (")[0].split(": ", 1)[-1]
