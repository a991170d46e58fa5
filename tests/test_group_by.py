"""Studies by DICOM identity (``prep --group-by study_uid|accession``), built from a real CT series
(pydicom's CT5N): a flat PACS dump with a DICOMDIR and a RIS report export keyed by accession
number, a patient folder with prior and current, blank UIDs, cut files, a gap in InstanceNumber.
Each study is told apart by its pixels (an HU offset), so a report paired with the wrong images fails."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from conftest import REAL_CT_CONFIG, by_position, copy_real_series, write_reports

from medalign.cli.main import main as cli
from medalign.io.dicom_groups import group_dicom_files


def _ris_export(path: Path, rows: dict[str, str], key: str = "accession_number") -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([key, "report"])
        for accession, text in rows.items():
            w.writerow([accession, text])


def _prep(tmp_path: Path, images: Path, reports: Path, *extra: str) -> tuple[int, Path]:
    (tmp_path / "p.yaml").write_text(REAL_CT_CONFIG)
    out = tmp_path / "ds"
    code = cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out),
                "--config", str(tmp_path / "p.yaml"), "--workers", "1", *extra])
    return code, out


def _mean_of(out: Path, row: dict) -> float:
    return float(np.load(out / row["volume"]).astype(np.float64).mean())


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def _dicomdir(folder: Path) -> None:
    """A DICOMDIR index beside the files, as media exports carry (pydicom's own FileSet writer)."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in sorted(folder.iterdir()):
        fs.add(pydicom.dcmread(f))
    fs.write(folder / "media")


def test_a_flat_pacs_dump_with_a_ris_export_pairs_every_report_with_its_own_images(tmp_path, capsys):
    dump = tmp_path / "dump"
    staging = tmp_path / "staging"
    offsets = {"ACC1001": 0, "ACC1002": 300, "ACC1003": 600}
    for n, (accession, offset) in enumerate(offsets.items()):
        copy_real_series(staging, new_study=True, accession=accession, prefix=f"x{n}_", hu_offset=offset)
    _dicomdir(staging)  # the DICOMDIR layout: DICOMDIR plus files under generated folder names
    (dump).mkdir()
    for f in sorted((staging / "media").rglob("*")):
        if f.is_file():
            target = dump / f.relative_to(staging / "media")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    assert (dump / "DICOMDIR").is_file() and len([f for f in dump.rglob("*") if f.is_file()]) == 16
    (dump / "notes.txt").write_text("not DICOM")  # a stray file is not a study
    # RIS export: accession-keyed, one report with no images, rows in another order
    _ris_export(tmp_path / "ris.csv", {"ACC1003": "Report ACC1003: large pleural effusion.",
                                       "ACC1001": "Report ACC1001: no pleural effusion.",
                                       "ACC1002": "Report ACC1002: small pleural effusion.",
                                       "ACC9999": "Report of an exam not in the dump."})
    code, out = _prep(tmp_path, dump, tmp_path / "ris.csv", "--group-by", "accession")
    assert code == 0
    printed = capsys.readouterr().out
    assert "study ids are the AccessionNumbers" in printed and "1 reports without images" in printed
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert sorted(rows) == sorted(offsets)
    means = {sid: _mean_of(out, r) for sid, r in rows.items()}
    for sid, row in rows.items():
        assert row["report"].startswith(f"Report {sid}:")  # its own report ...
    assert means["ACC1001"] < means["ACC1002"] < means["ACC1003"]  # ... with its own images
    log = (out / "prep.log").read_text()
    assert "--group-by accession: 15 DICOM files in 3 studies; 1 files that are not DICOM ignored" in log


def test_a_patient_folder_with_prior_and_current_by_study_uid(tmp_path):
    patient = tmp_path / "images" / "patient_0042"
    prior = copy_real_series(patient / "2024", new_study=True, accession="A-PRIOR")
    current = copy_real_series(patient / "2026", new_study=True, accession="A-CURRENT", hu_offset=400)
    uid = {name: str(pydicom.dcmread(files[0]).StudyInstanceUID) for name, files in (("prior", prior), ("current", current))}
    _ris_export(tmp_path / "ris.csv", {"A-PRIOR": "Prior: no effusion.", "A-CURRENT": "Current: new effusion."})
    code, out = _prep(tmp_path, tmp_path / "images", tmp_path / "ris.csv", "--group-by", "study_uid")
    assert code == 0
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert set(rows) == set(uid.values())
    assert rows[uid["prior"]]["report"] == "Prior: no effusion."
    assert rows[uid["current"]]["report"] == "Current: new effusion."
    assert _mean_of(out, rows[uid["prior"]]) < _mean_of(out, rows[uid["current"]])


def test_folder_mode_refuses_an_accession_keyed_report_file(tmp_path, capsys):
    copy_real_series(tmp_path / "images" / "s1", accession="A1")
    _ris_export(tmp_path / "ris.csv", {"A1": "No effusion."})
    code, _ = _prep(tmp_path, tmp_path / "images", tmp_path / "ris.csv")
    assert code == 2
    assert "keyed by accession_number; prepare with --group-by accession" in capsys.readouterr().err


def test_blank_uids_are_grouped_by_folder_and_said_so(tmp_path):
    images = tmp_path / "images"
    copy_real_series(images / "anon" / "p1", blank_ids=True)
    copy_real_series(images / "anon" / "p2", blank_ids=True, hu_offset=500)
    grouping = group_dicom_files(images, "study_uid")
    assert sorted(grouping.studies) == ["folder:anon/p1", "folder:anon/p2"]
    assert all(g.by_folder and len(g.files) == 5 for g in grouping.studies.values())
    _ris_export(tmp_path / "r.csv", {"folder:anon/p1": "First.", "folder:anon/p2": "Second."}, key="study_id")
    code, out = _prep(tmp_path, images, tmp_path / "r.csv", "--group-by", "study_uid")
    assert code == 0
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert rows["folder:anon/p1"]["report"] == "First." and rows["folder:anon/p2"]["report"] == "Second."
    assert _mean_of(out, rows["folder:anon/p1"]) < _mean_of(out, rows["folder:anon/p2"])
    log = (out / "prep.log").read_text()
    assert "5 files without StudyInstanceUID grouped by their folder as study folder:anon/p1" in log


def test_cut_files_and_a_lost_file_fail_their_study_by_name_in_a_dump(tmp_path):
    dump = tmp_path / "dump"
    copy_real_series(dump / "good", new_study=True, accession="GOOD")
    last = by_position(copy_real_series(dump / "t", new_study=True, accession="TRUNC"))[-1]
    pixels = len(pydicom.dcmread(last).PixelData)
    last.write_bytes(last.read_bytes()[: -pixels // 2])
    cut = by_position(copy_real_series(dump / "h", new_study=True, accession="HEADER"))[1]
    cut.write_bytes(cut.read_bytes()[:400])  # ends before its identity: which study it was is unknown
    middle = by_position(copy_real_series(dump / "g", new_study=True, accession="GAP"))[2]
    middle.unlink()  # a file lost between PACS and the dump
    _ris_export(tmp_path / "ris.csv", {a: f"Report {a}." for a in ("GOOD", "TRUNC", "HEADER", "GAP")})
    code, out = _prep(tmp_path, dump, tmp_path / "ris.csv", "--group-by", "accession")
    assert code == 3
    assert [r["study_id"] for r in pq.read_table(out / "manifest.parquet").to_pylist()] == ["GOOD"]
    errors = {e["study_id"]: e["reason"] for e in _errors(out)}
    assert errors["TRUNC"] == f"t/{last.name}: truncated: 256 of 512 pixel bytes"
    assert errors["HEADER"].startswith(f"h/{cut.name}: truncated or damaged DICOM")
    assert "maybe one of its slices" in errors["HEADER"]
    assert errors["GAP"].startswith("series #5 ") and "gap in InstanceNumber: 1 instance missing between 7 (g/2392) and 9 (g/3023)" in errors["GAP"]


def test_hashed_ids_keep_uids_and_accessions_out_of_every_file(tmp_path):
    dump = tmp_path / "dump"
    files = copy_real_series(dump, new_study=True, accession="ACC77123", patient_id="MRN-4411")
    uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    _ris_export(tmp_path / "ris.csv", {"ACC77123": "No effusion.", "ACC77999": "Orphan."})
    (tmp_path / "key").write_bytes(b"0123456789abcdef-secret")
    code, out = _prep(tmp_path, dump, tmp_path / "ris.csv", "--group-by", "study_uid", "--hash-ids", str(tmp_path / "key"))
    assert code == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["report"] == "No effusion." and rows[0]["study_id"].startswith("s")
    for f in out.rglob("*"):
        if f.is_file() and f.suffix != ".npy":
            data = f.read_bytes()
            for secret in (uid.encode(), b"ACC77", b"MRN-4411"):
                assert secret not in data, (f, secret)


def test_group_by_on_a_tree_without_dicom_says_so(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "s1.nii.gz").write_bytes(b"not really")
    _ris_export(tmp_path / "r.csv", {"s1": "No effusion."}, key="study_id")
    code, _ = _prep(tmp_path, tmp_path / "images", tmp_path / "r.csv", "--group-by", "study_uid")
    assert code == 2 and "found no DICOM files (1 other files)" in capsys.readouterr().err


def test_identity_read_agrees_with_pydicom_on_its_test_files():
    """The raw-element identity read against pydicom's own ``read_partial`` on every file of
    pydicom's test set (implicit and explicit VR, big endian, deflated, cut short, not DICOM)."""
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    from medalign.io.dicom_groups import read_identity

    accession, study, series = Tag(0x0008, 0x0050), Tag(0x0020, 0x000D), Tag(0x0020, 0x000E)

    def reference(path: Path) -> tuple[str, str] | str | None:
        with open(path, "rb") as f:
            head = f.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                return None
            f.seek(0)
            past = []
            try:
                ds = read_partial(f, stop_when=lambda tag, vr, length: bool(past.append(tag > series) or past[-1]))
            except Exception:  # noqa: BLE001 - any failure of the reference is "cannot be read"
                return "error"
        if not any(past):
            return "error"
        return tuple(str(ds[t].value or "").strip() if t in ds else "" for t in (study, accession))

    def ours(path: Path) -> tuple[str, str] | str | None:
        try:
            return read_identity(path)
        except ValueError:
            return "error"

    files = sorted(p for p in Path(pydicom.data.__file__).parent.joinpath("test_files").rglob("*") if p.is_file())
    results = {p.name: (ours(p), reference(p)) for p in files}
    assert sum(r[1] not in (None, "error") for r in results.values()) > 50
    assert {name: r for name, r in results.items() if r[0] != r[1]} == {}


def test_labels_keyed_by_accession_carry_through_label_prep_and_the_tasks(tmp_path, capsys):
    """``label`` on an accession-keyed RIS export writes ``accession_number``; ``prep --labels`` takes that
    file for a ``--group-by accession --hash-ids`` dataset, and so does the tasks' labels reader
    (probe, zeroshot, finetune, retrieval-eval) given the same key; without it, one line says why."""
    from medalign.prep.manifest import read_manifest
    from medalign.errors import InputError
    from medalign.tasks.zeroshot import read_label_csv

    dump = tmp_path / "dump"
    texts = {"RAD-1": "Right pleural effusion.", "RAD-2": "No pleural effusion.", "RAD-3": "Small left pleural effusion."}
    for n, accession in enumerate(texts):
        copy_real_series(dump, new_study=True, accession=accession, prefix=f"x{n}_", hu_offset=100 * n)
    _ris_export(tmp_path / "ris.csv", texts)
    assert cli(["label", "--reports", str(tmp_path / "ris.csv"), "--out", str(tmp_path / "labels.csv")]) == 0
    labels = list(csv.DictReader(open(tmp_path / "labels.csv", encoding="utf-8")))
    assert [r["accession_number"] for r in labels] == list(texts) and [r["pleural effusion"] for r in labels] == ["1", "0", "1"]
    (tmp_path / "key").write_bytes(b"0123456789abcdef-secret")
    code, out = _prep(tmp_path, dump, tmp_path / "ris.csv", "--group-by", "accession", "--hash-ids", str(tmp_path / "key"),
                      "--labels", str(tmp_path / "labels.csv"))
    said = capsys.readouterr()
    assert code == 0, said.err
    assert "given labels: 3 of 3 studies labelled by the labels file" in (out / "prep.log").read_text()
    # the splits are said, and what an empty one means for the commands that follow
    import re

    counts = {k: int(v) for k, v in re.findall(r"(train|val|test) (\d+)", said.out.split("prep: studies per split: ")[1].splitlines()[0])}
    assert sum(counts.values()) == 3
    assert ("note: the test split is empty" in said.err) == (counts["test"] == 0)
    assert ("note: the val split has" in said.err) == (counts["val"] < 2)
    manifest = read_manifest(out)
    ids = manifest.columns["study_id"]
    truth = read_label_csv(tmp_path / "labels.csv", ids, ["pleural effusion"], (tmp_path / "key").read_bytes().strip())
    effusion = {sid: manifest.columns["pleural effusion"][i] for i, sid in enumerate(ids)}
    assert [truth[i, 0] for i in range(len(ids))] == [effusion[sid] for sid in ids] and sorted(truth[:, 0]) == [0, 1, 1]
    with pytest.raises(InputError, match="none of its 3 accession_number values names one of the 3 studies .*pass the --hash-ids KEYFILE"):
        read_label_csv(tmp_path / "labels.csv", ids, ["pleural effusion"])


def test_loose_dicom_files_in_folder_mode_are_not_dropped_without_a_word(tmp_path, capsys):
    """Folder mode: study sub-folders, plus a series lying loose beside them (a PACS dump's habit): one
    line naming the count and --group-by, instead of "1 studies" from the folders alone."""
    copy_real_series(tmp_path / "images" / "s1", accession="A1")
    copy_real_series(tmp_path / "images", new_study=True)
    (tmp_path / "images" / "notes.txt").write_text("export notes")
    write_reports(tmp_path / "r.csv", ["s1"])
    code, out = _prep(tmp_path, tmp_path / "images", tmp_path / "r.csv")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "5 DICOM files lie directly in the images folder" in err[0] and "--group-by study_uid" in err[0]
    assert not (out / "manifest.parquet").exists()


def test_a_blank_uid_series_scattered_over_folders_stays_one_series(tmp_path):
    """A real series (CT5N) with its SeriesInstanceUID blanked and no SeriesNumber, its files spread over
    three folders of one study: one series of 5 slices, the same volume as the intact series; a second
    blank series of another geometry (pixel spacing) beside it stays a series of its own."""
    from medalign.io.dicom import load_dicom_study, scan_series
    from medalign.io.volume import SeriesSelection

    intact = copy_real_series(tmp_path / "intact")
    study = tmp_path / "study"
    for i, f in enumerate(by_position(intact)):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = ""
        del ds.SeriesNumber
        (study / "abc"[i % 3]).mkdir(parents=True, exist_ok=True)
        ds.save_as(study / "abc"[i % 3] / f"{i}.dcm", enforce_file_format=True)
    policy = SeriesSelection(planes=[], min_slices=3)
    series, _ = scan_series(study)
    assert [len(s.files) for s in series] == [5]
    np.testing.assert_array_equal(load_dicom_study(study, policy)[0].array, load_dicom_study(tmp_path / "intact", policy)[0].array)
    for i, f in enumerate(sorted(study.rglob("*.dcm"))[:3]):  # another reconstruction: a finer pixel grid
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [float(v) / 2 for v in ds.PixelSpacing]
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(study / "abc"[i % 3] / f"fine{i}.dcm", enforce_file_format=True)
    series, _ = scan_series(study)
    assert sorted(len(s.files) for s in series) == [3, 5]


def test_a_flat_dump_prepares_a_blank_uid_series_scattered_over_folders(tmp_path):
    """The same scattered blank-UID series in a PACS dump keyed by accession (``--group-by accession``):
    one study, its 5 slices, the intact series' volume."""
    intact = copy_real_series(tmp_path / "intact", accession="SCATTER")
    dump = tmp_path / "dump"
    for i, f in enumerate(by_position(intact)):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = ""
        del ds.SeriesNumber
        (dump / f"export{i % 3}").mkdir(parents=True, exist_ok=True)
        ds.save_as(dump / f"export{i % 3}" / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    _ris_export(tmp_path / "ris.csv", {"SCATTER": "No effusion."})
    code, out = _prep(tmp_path, dump, tmp_path / "ris.csv", "--group-by", "accession")
    assert code == 0, (out / "prep.log").read_text()
    (row,) = pq.read_table(out / "manifest.parquet").to_pylist()
    (tmp_path / "ref").mkdir()
    reference_code, reference = _prep(tmp_path / "ref", tmp_path / "intact", tmp_path / "ris.csv", "--group-by", "accession")
    assert reference_code == 0
    (ref_row,) = pq.read_table(reference / "manifest.parquet").to_pylist()
    np.testing.assert_array_equal(np.load(out / row["volume"]), np.load(reference / ref_row["volume"]))
