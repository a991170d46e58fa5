"""Identifiers in report text (names after titles, dates, ID numbers) never reach the dataset."""

from __future__ import annotations

import csv
import shutil

import pytest

from medalign.cli.main import main as cli
from medalign.prep.deid import redact_identifiers


@pytest.mark.parametrize("text, gone, kept", [
    ("Compared with CT of 12/03/2024 and March 5, 2023. Dr. Anna Meyer reviewed.", ["12/03/2024", "March 5", "Meyer", "Anna"], ["Compared with CT"]),
    ("Patient: John Q. Public, MRN 12345678. DOB: 01.02.1960.", ["John", "Public", "12345678", "1960"], []),
    ("Findings discussed with Dr Jones on 3rd June 2024. Accession no. A998877.", ["Jones", "June 2024", "A998877"], ["Findings discussed with"]),
    ("Signed by: Meyer, Anna", ["Meyer", "Anna"], []),
    ("An 8 mm nodule on series 3 image 45 at T12. Mass 2.5 x 3.1 cm. Density 35 HU.", [], ["8 mm", "series 3 image 45", "T12", "2.5 x 3.1 cm", "35 HU"]),
    ("No change since 2024-01-15. The right lung is clear.", ["2024-01-15"], ["The right lung is clear."]),
])
def test_redaction(text, gone, kept):
    out = redact_identifiers(text)
    for s in gone:
        assert s not in out, (s, out)
    for s in kept:
        assert s in out, (s, out)


def test_prep_writes_no_identifier_from_report_text(phantom_ct, tmp_path):
    rows = list(csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8")))[:3]
    images = tmp_path / "images"
    for r in rows:
        shutil.copytree(phantom_ct / "images" / r["study_id"], images / r["study_id"])
    secrets = ["Gwendolyn", "Featherstonehaugh", "19/07/2023", "88812345", "Okonkwo"]
    with open(tmp_path / "reports.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["study_id", "report"])
        w.writeheader()
        for r in rows:
            text = f"Patient: Gwendolyn Featherstonehaugh. MRN 88812345. Compared with 19/07/2023. {r['report']} Reported by Dr. Okonkwo."
            w.writerow({"study_id": r["study_id"], "report": text})
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(out), "--config", "demo_ct"]) == 0
    for p in out.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for s in secrets:
                assert s.encode() not in data, (s, p)


def test_hash_ids_pseudonymises_every_study_id(phantom_ct, tmp_path):
    import hashlib
    import hmac
    import json

    import pyarrow.parquet as pq

    rows = list(csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8")))[:3]
    images = tmp_path / "images"
    for r in rows:
        shutil.copytree(phantom_ct / "images" / r["study_id"], images / r["study_id"])
    (images / "broken_study_x").mkdir()  # fails: empty
    with open(tmp_path / "reports.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["study_id", "report"])
        w.writeheader()
        w.writerows([{"study_id": r["study_id"], "report": r["report"]} for r in rows]
                    + [{"study_id": "broken_study_x", "report": "No effusion."}, {"study_id": "orphan_report_y", "report": "x"}])
    key = tmp_path / "secret.key"
    key.write_bytes(b"0123456789abcdef-hospital-secret")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(out), "--config", "demo_ct",
                "--hash-ids", str(key)]) == 3
    expected = {"s" + hmac.new(key.read_bytes(), r["study_id"].encode(), hashlib.sha256).hexdigest()[:20] for r in rows}
    assert set(pq.read_table(out / "manifest.parquet").column("study_id").to_pylist()) == expected
    originals = [r["study_id"] for r in rows] + ["broken_study_x", "orphan_report_y", str(images)]
    for p in out.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for s in originals + ["hospital-secret"]:
                assert s.encode() not in data, (s, p)
    error = json.loads((out / "errors.jsonl").read_text())
    assert "empty study folder" in error["reason"] and error["study_id"].startswith("s")
