"""RAD-ChestCT in its own layout (``prep --layout rad-chestct``): a phantom tree written as the data set
is published (int16 HU .npz, superior slice first, rows anterior -> posterior, columns right -> left,
0.8 mm; abnormality*location labels) must read to the true-orientation volume and prepare to the same
cache as its true NIfTI; its labels reach CT-RATE's findings through the published map, unmapped
findings unknown, never negative."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from medalign.cli.main import main as cli
from medalign.data.dataset import as_unit_array
from medalign.errors import InputError
from medalign.io.rad_chestct import load_rad_chestct_volume, parse_volume_name, read_abnormality_labels
from medalign.prep.manifest import read_manifest
from medalign.reports.label_map import load_label_map
from medalign.reports.vocabulary import load_vocabulary

PRESET = ["--config", "demo_ct", "--workers", "1"]


@pytest.fixture(scope="module")
def rad_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rad")
    assert cli(["synth", "--layout", "rad-chestct", "--out", str(out), "--studies", "9", "--seed", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def prepared(rad_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "ds"
    assert cli(["prep", "--layout", "rad-chestct", "--images", str(rad_tree / "dataset"), "--out", str(out), *PRESET]) == 0
    return out


def _canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The array in RAS+ voxel order (nibabel's reorientation, independent of medalign's)."""
    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(array, affine)).dataobj)


def test_names_sets_and_reading_in_the_published_orientation(rad_tree):
    assert parse_volume_name("tst34780.npz").split == "test" and parse_volume_name("trn00001.npz").study_id == "trn00001"
    assert parse_volume_name("val27291.npz").split == "val" and parse_volume_name("scan.npz") is None
    for stored in sorted((rad_tree / "dataset").rglob("*.npz")):
        volume = load_rad_chestct_volume(stored)
        truth = nib.load(str(rad_tree / "truth" / stored.name.replace(".npz", ".nii.gz")))
        ours = _canonical(volume.array, volume.affine)
        theirs = _canonical(np.asarray(truth.dataobj, dtype=np.float32), truth.affine)
        assert volume.spacing == pytest.approx((0.8, 0.8, 0.8))
        np.testing.assert_array_equal(ours, theirs)
        assert not all(np.array_equal(ours, np.flip(ours, axis)) for axis in range(3))  # the check can see a flip


def test_prepared_volumes_equal_the_true_niftis(rad_tree, prepared, tmp_path):
    reports = tmp_path / "reports.csv"
    truth = sorted((rad_tree / "truth").glob("*.nii.gz"))
    with open(reports, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["study_id", "report"], *([p.name.removesuffix(".nii.gz"), "No pleural effusion."] for p in truth)])
    reference = tmp_path / "ref"
    assert cli(["prep", "--images", str(rad_tree / "truth"), "--reports", str(reports), "--out", str(reference), *PRESET]) == 0
    ours = {r["study_id"]: r for r in pq.read_table(prepared / "manifest.parquet").to_pylist()}
    theirs = {r["study_id"]: r for r in pq.read_table(reference / "manifest.parquet").to_pylist()}
    assert sorted(ours) == sorted(theirs) and len(ours) == 9
    for sid, row in ours.items():
        a = as_unit_array(np.load(prepared / row["volume"]))
        b = as_unit_array(np.load(reference / theirs[sid]["volume"]))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1.01 / 255
        assert row["report"] == "" and "RAD-ChestCT" in row["provenance"]


def test_labels_through_the_published_map_and_sets_as_splits(rad_tree, prepared):
    released: dict[str, dict[str, int]] = {}
    for path in sorted((rad_tree / "dataset" / "labels").glob("*.csv")):
        with open(path, encoding="utf-8") as f:
            for row in csv.DictReader(f):  # any location of an abnormality counts
                mine = released.setdefault(row["NoteAcc_DEID"], {})
                for column, value in row.items():
                    if "*" in column:
                        mine[column.split("*")[0]] = max(mine.get(column.split("*")[0], 0), int(value))
    rows = pq.read_table(prepared / "manifest.parquet").to_pylist()
    assert {r["study_id"][:3]: r["split"] for r in rows} == {"trn": "train", "val": "val", "tst": "test"}
    positives = 0
    for row in rows:
        mine = released[row["study_id"]]
        assert row["pleural effusion"] == mine["pleural_effusion"] and row["lung nodule"] == mine["nodule"]
        assert row["coronary artery wall calcification"] == row["arterial wall calcification"] == mine["calcification"]
        assert row["lymphadenopathy"] is None and row["medical material"] is None  # unmapped: unknown
        positives += row["pleural effusion"] + row["lung nodule"] + row["cardiomegaly"]
    assert positives > 0
    manifest = read_manifest(prepared)
    truth = manifest.truth(["pleural effusion", "lymphadenopathy"])
    assert not np.isnan(truth[:, 0]).any() and np.isnan(truth[:, 1]).all()  # no report: "not mentioned" is not "absent"
    log = (prepared / "prep.log").read_text(encoding="utf-8")
    assert "patients per split" in log and "train 2, val 2, test 2" in log
    assert "unknown in every study (no RAD-ChestCT label maps to them): medical material, lymphadenopathy, mosaic attenuation pattern" in log


def test_the_label_map_file_is_checked():
    mapping = load_label_map("rad_chestct")
    vocab = load_vocabulary("chest_ct")
    mapping.check(vocab, "rad_chestct")
    assert len(mapping.targets()) == 15
    labels = mapping.apply({"calcification": 1, "nodule": 0}, vocab)
    assert labels["coronary artery wall calcification"] == labels["arterial wall calcification"] == 1 and labels["lung nodule"] == 0
    assert labels["emphysema"] is None
    with pytest.raises(Exception, match="is not a finding of the vocabulary"):
        mapping.check(load_vocabulary("oct"), "rad_chestct")


def test_bad_files_fail_alone_in_one_line_and_pretrain_refuses(rad_tree, tmp_path, capsys):
    root = tmp_path / "dataset"
    shutil.copytree(rad_tree / "dataset", root)
    broken = next(root.rglob("val00005.npz"))
    broken.write_bytes(b"not a zip")
    out = tmp_path / "ds"
    assert cli(["prep", "--layout", "rad-chestct", "--images", str(root), "--out", str(out), *PRESET]) == 3
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["reason"].startswith("val00005.npz: unreadable .npz")
    assert len(pq.read_table(out / "manifest.parquet")) == 8
    assert cli(["pretrain", "--data", str(out), "--out", str(tmp_path / "run"), "--config", "demo_ct"]) == 2
    assert "training studies have no report" in capsys.readouterr().err
    bad = tmp_path / "labels.csv"
    bad.write_text("NoteAcc_DEID,nodule\ntrn00001,1\n", encoding="utf-8")
    with pytest.raises(InputError, match="column 'nodule' is not abnormality\\*location"):
        read_abnormality_labels(bad)


def test_zeroshot_on_rad_chestct_uses_the_released_labels_and_its_table(prepared, tmp_path, capsys):
    model = Path(__file__).parent / "data" / "pointing_model"
    out = tmp_path / "z"
    assert cli(["zeroshot", "--checkpoint", str(model), "--data", str(prepared), "--out", str(out), "--split", "all",
                "--vocab", "chest_ct", "--protocol", "ct-clip"]) == 0
    assert "published on RAD-ChestCT (calcifications merged)" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ground_truth"] == "the released labels in the manifest (no reports)"
    per = metrics["protocol"]["per_finding"]
    assert per["lymphadenopathy"] == {"auroc": None, "skipped": "no labels (unknown in every study)"}
    assert "calcification" in per and "arterial wall calcification" not in per
    assert per["pleural effusion"]["auroc"] is not None


def test_retrieval_eval_without_reports_gives_study_figures_only(prepared, tmp_path, capsys):
    model = Path(__file__).parent / "data" / "pointing_model"
    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(model), "--data", str(prepared), "--out", str(index)]) == 0
    assert cli(["retrieval-eval", "--index", str(index), "--data", str(prepared), "--split", "all", "--protocol", "ct-clip",
                "--out", str(tmp_path / "r")]) == 0
    assert "no reports: report recall not computed" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["report_to_study"] is None and metrics["protocol"]["report_to_volume_recall"] is None
    assert metrics["study_to_study"]["map@10"] is not None and "no report" in metrics["note"]
