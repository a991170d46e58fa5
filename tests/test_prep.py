"""``medalign prep`` on phantom DICOM and real NIfTI: manifest, labels, resume, failures, privacy."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from nibabel.testing import data_path

from medalign.cli.main import main as cli
from medalign.data.dataset import as_unit_array
from medalign.errors import InputError
from medalign.prep.splits import assign_split


def test_manifest_rows_labels_and_volumes(prepared_ct, phantom_ct):
    table = pq.read_table(prepared_ct / "manifest.parquet").to_pylist()
    truth = {r["study_id"]: r for r in csv.DictReader(open(phantom_ct / "labels.csv"))}
    assert len(table) == len(truth)
    for row in table:
        assert row["split"] == assign_split(row["study_id"])
        vol = np.load(prepared_ct / row["volume"], mmap_mode="r")
        assert vol.shape == (48, 48, 40) and vol.dtype == np.uint8
        assert int(vol.min()) == 0 and int(vol.max()) > 200  # the window in 256 levels: air at 0, bone near 255
        assert row["spacing"] == pytest.approx([8.0, 8.0, 7.5])
        for f in ("pleural effusion", "cardiomegaly", "lung nodule", "emphysema", "consolidation"):
            assert (row[f] == 1) == (truth[row["study_id"]][f] == "1")
        assert row["impression"] and row["findings"]
    splits = {r["split"] for r in table}
    assert splits <= {"train", "val", "test"} and "train" in splits


def test_preprocessed_volume_is_ras_and_windowed(prepared_ct, phantom_ct):
    """Air maps to 0 and bone to 1; in RAS the spine (midline bone) lies at low Y, the posterior side."""
    row = pq.read_table(prepared_ct / "manifest.parquet").to_pylist()[0]
    vol = as_unit_array(np.load(prepared_ct / row["volume"]))
    assert vol[0, 0, :].max() < 0.05  # corner: air (or padding)
    x_mid = vol.shape[0] // 2
    midline = vol[x_mid - 2 : x_mid + 3]
    bone_y = np.nonzero(midline >= 0.95)[1]
    assert len(bone_y) > 20
    assert bone_y.mean() < 0.4 * vol.shape[1]  # a flip of the anterior-posterior axis puts it above 0.6


def test_split_column_and_resume(phantom_ct, tmp_path):
    rows = list(csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8")))[:6]
    for i, r in enumerate(rows):
        r["split"] = "test" if i < 3 else "train"
    reports = tmp_path / "reports.csv"
    with open(reports, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["study_id", "report", "split"])
        w.writeheader()
        w.writerows(rows)
    images = tmp_path / "images"
    images.mkdir()
    for r in rows:
        shutil.copytree(phantom_ct / "images" / r["study_id"], images / r["study_id"])
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--workers", "1"]) == 0
    table = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["split"] for r in table] == ["test"] * 3 + ["train"] * 3
    before = {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}
    (out / "records" / f"{rows[0]['study_id']}.json").unlink()  # as if killed before this study finished
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--workers", "1"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}
    changed = [n for n in before if before[n] != after[n]]
    assert changed == [f"{rows[0]['study_id']}.npy"]
    assert len(pq.read_table(out / "manifest.parquet")) == 6


def test_bad_studies_are_recorded_and_good_ones_kept(phantom_ct, tmp_path, capsys):
    rows = list(csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8")))[:3]
    images = tmp_path / "images"
    images.mkdir()
    for r in rows:
        shutil.copytree(phantom_ct / "images" / r["study_id"], images / r["study_id"])
    (images / "junk").mkdir()
    (images / "junk" / "x.dcm").write_bytes(b"\x00" * 300)
    (images / "empty").mkdir()
    (images / "noreport").mkdir()
    shutil.copytree(phantom_ct / "images" / rows[0]["study_id"], images / "noreport" / "a")
    reports = tmp_path / "reports.csv"
    with open(reports, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["study_id", "report"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows + [{"study_id": "junk", "report": "No effusion."}, {"study_id": "empty", "report": "x"}, {"study_id": "ghost", "report": "y"}])
    out = tmp_path / "ds"
    code = cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--workers", "2"])
    assert code == 3
    errors = {e["study_id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"junk", "empty", "noreport"}
    assert "no DICOM image files" in errors["junk"]["reason"]
    assert "empty study folder" in errors["empty"]["reason"]
    assert "no report" in errors["noreport"]["reason"]
    assert len(pq.read_table(out / "manifest.parquet")) == 3
    assert "ghost" in (out / "prep.log").read_text()


def test_no_patient_identifiers_reach_outputs(prepared_ct, phantom_ct, trained_run):
    """Names, patient IDs, birth dates, accession numbers and institutions from the headers are nowhere in the outputs."""
    secrets = set()
    for folder in (phantom_ct / "images").iterdir():
        f = next(p for p in folder.rglob("*.dcm"))
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        secrets |= {str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber, ds.InstitutionName, ds.StudyInstanceUID, ds.SeriesInstanceUID}
    encoded = {s.encode() for s in secrets if s}
    assert all(re.fullmatch(rb"[\x20-\x7e]+", s) for s in encoded)  # printable ASCII: each lies inside one printable run
    runs = re.compile(rb"[\x20-\x7e]{%d,}" % min(len(s) for s in encoded))
    hits = []
    for root in (prepared_ct, trained_run):
        for p in root.rglob("*"):
            if p.is_file():
                text = b"\n".join(runs.findall(p.read_bytes()))  # the file's printable runs, as `strings` lists them
                hits += [(p.name, s) for s in encoded if s in text]
    assert hits == []


def test_nifti_studies_from_nibabel(tmp_path):
    """Real NIfTI (nibabel's anatomical.nii, LAS) as a bare file and inside a folder."""
    images = tmp_path / "images"
    (images / "b").mkdir(parents=True)
    src = Path(data_path) / "anatomical.nii"
    shutil.copy(src, images / "a.nii")
    img = nib.load(str(src))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), str(images / "b" / "vol.nii.gz"))
    reports = tmp_path / "r.jsonl"
    reports.write_text('{"study_id": "a", "report": "No pleural effusion."}\n{"study_id": "b", "report": "Cardiomegaly."}\n')
    cfg = tmp_path / "p.yaml"
    cfg.write_text("steps:\n  - orientation: {axcodes: RAS}\n  - spacing: {pixdim: [3.0, 3.0, 3.0]}\n  - percentile_window: {}\n  - crop_or_pad: {spatial_size: [32, 32, 32]}\nseries: {modalities: [MR]}\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(cfg), "--workers", "1"]) == 0
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["source_spacing"] == pytest.approx(list(img.header.get_zooms()[:3]), rel=1e-4)
    assert rows["a"]["pleural effusion"] == 0 and rows["b"]["cardiomegaly"] == 1
    a = as_unit_array(np.load(out / rows["a"]["volume"]))
    b = as_unit_array(np.load(out / rows["b"]["volume"]))
    np.testing.assert_allclose(a, b, atol=1.01 / 255)  # same image, same result via either layout


def test_oct_studies_prepare_with_the_oct_preset_by_default(tmp_path):
    """Ophthalmic Tomography multi-frame DICOM: the default preset becomes demo_oct, labels use the OCT vocabulary."""
    raw = tmp_path / "raw"
    assert cli(["synth", "--out", str(raw), "--modality", "oct", "--studies", "6", "--seed", "2"]) == 0
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(raw / "images"), "--reports", str(raw / "reports.csv"), "--out", str(out), "--workers", "1"]) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    truth = {r["study_id"]: r for r in csv.DictReader(open(raw / "labels.csv"))}
    assert len(rows) == 6
    for r in rows:
        assert r["shape"] == [64, 64, 32]
        for f in ("drusen", "subretinal fluid", "intraretinal cysts", "epiretinal membrane"):
            assert (r[f] == 1) == (truth[r["study_id"]][f] == "1")
    assert "modality: oct" in (out / "prep_config.yaml").read_text()


def test_shards_then_merge_equal_one_run(phantom_ct, prepared_ct, tmp_path):
    out = tmp_path / "sharded"
    common = ["prep", "--images", str(phantom_ct / "images"), "--reports", str(phantom_ct / "reports.csv"), "--out", str(out), "--config", "demo_ct", "--workers", "1"]
    assert cli(["prep", "--merge", "--out", str(out)]) == 2  # nothing to merge yet
    assert cli(common + ["--shard", "0/3"]) == 0
    assert cli(["prep", "--merge", "--out", str(out)]) == 2  # shards 1 and 2 missing
    for i in (1, 2):
        assert cli(common + ["--shard", f"{i}/3"]) == 0
    assert cli(["prep", "--merge", "--out", str(out)]) == 0
    merged = pq.read_table(out / "manifest.parquet").to_pylist()
    single = pq.read_table(prepared_ct / "manifest.parquet").to_pylist()
    assert [r["study_id"] for r in merged] == sorted(r["study_id"] for r in single)
    by_id = {r["study_id"]: r for r in single}
    for r in merged:
        assert r == by_id[r["study_id"]]
        assert np.array_equal(np.load(out / r["volume"]), np.load(prepared_ct / r["volume"]))


@pytest.mark.parametrize("delimiter, encoding", [(";", "cp1252"), ("\t", "utf-8-sig"), (",", "utf-8"), ("|", "utf-8")])
def test_reports_as_hospitals_export_them(tmp_path, delimiter, encoding):
    """European Excel's semicolons, tab-separated and pipe exports, a byte-order mark or Windows-1252, and
    the source system's own column names (--columns): the same reports come out."""
    from medalign.io.reports import read_reports
    from medalign.io.tables import parse_columns

    path = tmp_path / "export.csv"
    rows = [["AccNo", "Befund", "Set"], ["A1", "Kein Pleuraerguss; Herz normal, 3,5 cm Rundherd.", "train"], ["A2", "Ödem der Lunge.", "test"]]
    path.write_bytes("\r\n".join(delimiter.join(f'"{v}"' if delimiter in v or ";" in v or "," in v else v for v in r) for r in rows)
                     .encode(encoding))
    reports, problems, key = read_reports(path, parse_columns("id=AccNo, text=Befund, split=Set"))
    assert key == "study_id" and not problems
    assert reports == {"A1": {"report": "Kein Pleuraerguss; Herz normal, 3,5 cm Rundherd.", "split": "train"},
                       "A2": {"report": "Ödem der Lunge.", "split": "test"}}
    with pytest.raises(InputError, match=r"no column 'Report' \(for report\); found: AccNo, Befund, Set"):
        read_reports(path, parse_columns("id=AccNo,report=Report"))
    with pytest.raises(InputError, match="name yours with --columns"):
        read_reports(path)


def test_columns_option_is_checked_on_the_command_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "medalign.cli.main", "label", "--reports", __file__, "--out", str(tmp_path / "l.csv"),
                          "--columns", "patient=PID"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown role 'patient' (roles: id, accession, report (or text), split)" in res.stderr


def test_a_split_column_that_splits_a_patient_is_refused(phantom_ct, tmp_path, capsys):
    """Two studies of one patient (the same DICOM PatientID) in train and test: exit 2 naming both,
    before any manifest; the same refusal on a rerun (the studies are then prepared already); with
    both in train it prepares and prints patients per split. No PatientID reaches the outputs."""
    rows = list(csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8")))[:4]
    images = tmp_path / "images"
    for r in rows:
        shutil.copytree(phantom_ct / "images" / r["study_id"], images / r["study_id"])
    first, prior = rows[0]["study_id"], rows[3]["study_id"]
    patient = pydicom.dcmread(next((images / first).rglob("*.dcm")), stop_before_pixels=True).PatientID
    for f in (images / prior).rglob("*.dcm"):  # the prior study of the first study's patient
        ds = pydicom.dcmread(f)
        ds.PatientID = patient
        ds.save_as(f)
    reports = tmp_path / "reports.csv"

    def write(splits):
        with open(reports, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, ["study_id", "report", "split"])
            w.writeheader()
            w.writerows({"study_id": r["study_id"], "report": r["report"], "split": s} for r, s in zip(rows, splits))

    out = tmp_path / "ds"
    argv = ["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--workers", "1"]
    write(["train", "train", "test", "test"])
    for _ in range(2):  # the rerun finds the studies prepared and still checks them
        capsys.readouterr()
        assert cli(argv) == 2
        err = "\n".join(ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("prep: "))  # progress lines aside
        assert len(err.strip().splitlines()) == 1
        assert f"the split column puts one patient in two splits: studies {first} (train), {prior} (test) share a PatientID" in err
        assert not (out / "manifest.parquet").exists()
    write(["train", "train", "test", "train"])
    assert cli(argv) == 0
    assert "prep: patients per split: train 2, val 0, test 1" in capsys.readouterr().out
    assert all(patient.encode() not in f.read_bytes() for f in out.rglob("*") if f.is_file())
