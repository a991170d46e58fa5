"""CT-RATE in its own layout (``prep --layout ct-rate``): a phantom tree written as CT-RATE publishes
it, with its traps (values stored HU + 1024, wrong header voxel size, both right in the metadata CSV),
must prepare to the same cached volumes as the true-HU, true-spacing NIfTI of each volume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from medalign.cli.main import main as cli
from medalign.data.dataset import as_unit_array
from medalign.errors import InputError
from medalign.io.ct_rate import parse_volume_name, read_metadata
from medalign.synth.ct_rate import CT_RATE_LABELS, WRONG_HEADER_SPACING

PRESET = ["--config", "demo_ct", "--workers", "1"]


@pytest.fixture(scope="module")
def ct_rate_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ctrate")
    assert cli(["synth", "--layout", "ct-rate", "--out", str(out), "--studies", "8", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def prepared(ct_rate_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "ds"
    assert cli(["prep", "--layout", "ct-rate", "--images", str(ct_rate_tree / "dataset"), "--out", str(out), *PRESET]) == 0
    return out


def test_names_and_metadata_as_ct_rate_writes_them(ct_rate_tree):
    parts = parse_volume_name("valid_4_a_2.nii.gz")
    assert (parts.study_id, parts.patient_id, parts.reconstruction) == ("valid_4_a", "valid_4", 2)
    assert parse_volume_name("valid_4_a.nii.gz") is None and parse_volume_name("scan.nii.gz") is None
    metadata = read_metadata(ct_rate_tree / "dataset")
    geometry = next(iter(metadata.values()))
    assert geometry.spacing == (4.0, 4.0, 7.5) and (geometry.slope, geometry.intercept) == (1.0, -1024.0)


def test_prepared_volumes_equal_the_true_hu_true_spacing_niftis(ct_rate_tree, prepared, tmp_path):
    """The same preset on the truth NIfTIs (one study per volume, the default folder layout) gives the same cache."""
    reports = tmp_path / "reports.csv"
    truth = sorted((ct_rate_tree / "truth").glob("*.nii.gz"))
    with open(reports, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "report"])
        w.writerows([p.name.removesuffix(".nii.gz"), "No pleural effusion."] for p in truth)
    reference = tmp_path / "ref"
    assert cli(["prep", "--images", str(ct_rate_tree / "truth"), "--reports", str(reports), "--out", str(reference), *PRESET]) == 0
    ours = {r["study_id"]: r for r in pq.read_table(prepared / "manifest.parquet").to_pylist()}
    theirs = {r["study_id"]: r for r in pq.read_table(reference / "manifest.parquet").to_pylist()}
    assert len(ours) == 8 and len(theirs) == 16  # 8 scans of 2 reconstructions each
    for sid, row in ours.items():
        ref = theirs[f"{sid}_1"]  # equal thinness: the first reconstruction is taken
        assert row["source_spacing"] == pytest.approx([4.0, 4.0, 7.5]) != pytest.approx(list(WRONG_HEADER_SPACING))
        assert row["source_spacing"] == pytest.approx(ref["source_spacing"])
        a = as_unit_array(np.load(prepared / row["volume"]))
        b = as_unit_array(np.load(reference / ref["volume"]))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1.01 / 255  # one uint8 level at most (float rounding)
        assert "from the metadata CSV" in row["provenance"]


def test_splits_reports_and_released_labels(ct_rate_tree, prepared):
    rows = pq.read_table(prepared / "manifest.parquet").to_pylist()
    for row in rows:
        assert row["split"] == "test" if row["study_id"].startswith("valid_") else row["split"] in ("train", "val")
        assert row["findings"] and row["impression"]
    patients: dict[str, set] = {}
    for row in rows:
        patients.setdefault(row["study_id"].rsplit("_", 1)[0], set()).add(row["split"])
    assert all(len(s) == 1 for s in patients.values())  # a patient's scans share one split
    released = {}
    for split in ("train", "valid"):
        with open(ct_rate_tree / "dataset" / "multi_abnormality_labels" / f"{split}_predicted_labels.csv", encoding="utf-8") as f:
            released.update({r["VolumeName"]: r for r in csv.DictReader(f)})
    for row in rows:
        given = released[f"{row['study_id']}_1.nii.gz"]
        for name in CT_RATE_LABELS:
            assert row[name.lower()] == int(given[name]), (row["study_id"], name)
    log = (prepared / "prep.log").read_text(encoding="utf-8")
    assert "--layout ct-rate: 16 volumes in 8 scans" in log and "agreement of the given labels with the report labeler" in log


def test_every_reconstruction_under_select_all(ct_rate_tree, tmp_path):
    preset = tmp_path / "all.yaml"
    preset.write_text("base: demo_ct\nseries: {select: all}\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--layout", "ct-rate", "--images", str(ct_rate_tree / "dataset"), "--out", str(out), "--config", str(preset),
                "--workers", "1"]) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 16 and len({r["study_id"] for r in rows}) == 8


def test_a_volume_without_metadata_fails_alone_in_one_line(ct_rate_tree, tmp_path):
    import shutil

    root = tmp_path / "dataset"
    shutil.copytree(ct_rate_tree / "dataset", root)
    meta = root / "metadata" / "validation_metadata.csv"
    lines = meta.read_text(encoding="utf-8").splitlines()
    dropped = lines[1].split(",")[0]
    meta.write_text("\n".join([lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    out = tmp_path / "ds"
    assert cli(["prep", "--layout", "ct-rate", "--images", str(root), "--out", str(out), *PRESET]) == 3
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in errors] == [f"{dropped}: no row in the metadata CSV (its voxel size and rescale are unknown)"]


def test_layout_refuses_reports_and_a_tree_of_another_shape(ct_rate_tree, tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli(["prep", "--layout", "ct-rate", "--images", str(ct_rate_tree / "dataset"), "--reports", str(ct_rate_tree / "dataset" /
                "radiology_text_reports" / "train_reports.csv"), "--out", str(out), *PRESET]) == 2
    assert "drop --group-by and --reports" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["prep", "--layout", "ct-rate", "--images", str(tmp_path / "empty"), "--out", str(out), *PRESET]) == 2
    assert "no CT-RATE volumes" in capsys.readouterr().err
    with pytest.raises(InputError, match="XYSpacing 'wide' is not a list of two numbers"):
        from medalign.io.ct_rate import _pixel_spacing

        _pixel_spacing("wide", "metadata.csv:2")


def test_released_labels_name_the_scans_prep_makes(ct_rate_tree, prepared):
    """``zeroshot --labels`` and ``prep --labels`` take CT-RATE's label file as it is: a ``VolumeName``
    stands for its scan too (the study ``--layout ct-rate`` makes), the first reconstruction's labels winning."""
    from medalign.reports.given_labels import read_given_labels
    from medalign.reports.vocabulary import load_vocabulary
    from medalign.tasks.zeroshot import read_label_csv

    labels = ct_rate_tree / "dataset" / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    rows = list(csv.DictReader(open(labels, encoding="utf-8")))
    given = read_given_labels(labels, load_vocabulary("ct_rate"))
    first = rows[0]["VolumeName"]
    scan = parse_volume_name(first).study_id
    assert given[scan] == given[first.removesuffix(".nii.gz")] and given[scan]["pleural effusion"] == int(rows[0]["Pleural effusion"])
    scans = sorted({r["study_id"] for r in pq.read_table(prepared / "manifest.parquet").to_pylist() if r["split"] == "test"})
    truth = read_label_csv(labels, scans, ["pleural effusion", "cardiomegaly"])
    assert not np.isnan(truth).any()
