"""Identifiers in report text (names after titles, dates, ID numbers) never reach the dataset."""

from __future__ import annotations

import csv
import shutil

import pytest

from medalign.cli.main import main as cli
from medalign.reports.deid import redact_identifiers


@pytest.mark.parametrize("text, gone, kept", [
    ("Compared with CT of 12/03/2024 and March 5, 2023. Dr. Anna Meyer reviewed.", ["12/03/2024", "March 5", "Meyer", "Anna"], ["Compared with CT"]),
    ("Patient: John Q. Public, MRN 12345678. DOB: 01.02.1960.", ["John", "Public", "12345678", "1960"], []),
    ("Findings discussed with Dr Jones on 3rd June 2024. Accession no. A998877.", ["Jones", "June 2024", "A998877"], ["Findings discussed with"]),
    ("Signed by: Meyer, Anna", ["Meyer", "Anna"], []),
    ("An 8 mm nodule on series 3 image 45 at T12. Mass 2.5 x 3.1 cm. Density 35 HU.", [], ["8 mm", "series 3 image 45", "T12", "2.5 x 3.1 cm", "35 HU"]),
    ("No change since 2024-01-15. The right lung is clear.", ["2024-01-15"], ["The right lung is clear."]),
    # clinical words that begin like a label, and a header after a name, stay (issue: "identified" became "[ID]")
    ("No suspicious pulmonary nodule is identified. Diffuse idiopathic skeletal hyperostosis. IDH wild-type.", [],
     ["No suspicious pulmonary nodule is identified.", "idiopathic", "IDH wild-type"]),
    ("Dr. Smith. FINDINGS: No effusion.", ["Smith"], ["FINDINGS: No effusion."]),
    ("Electronically signed by Ahmet Yilmaz, MD", ["Ahmet", "Yilmaz"], []),
    ("Call 555-123-4567 or (212) 555-0199, fax: +90 212 555 12 34, e-mail jane.doe@hospital.org.",
     ["555-123-4567", "555-0199", "212 555 12 34", "jane.doe@hospital.org"], ["Call"]),
    ("Referring physician: José García. Lives at 12 Baker Street.", ["José", "García", "Baker Street"], []),
    ("Cardiothoracic ratio of 16.2/24.7. May represent atelectasis. CTDIvol 12.3 mGy, DLP 456 mGy*cm.", [],
     ["16.2/24.7", "May represent atelectasis", "DLP 456 mGy*cm"]),
])
def test_redaction(text, gone, kept):
    out = redact_identifiers(text)
    for s in gone:
        assert s not in out, (s, out)
    for s in kept:
        assert s in out, (s, out)


def test_every_generated_identifier_is_removed():
    """``deid_sets.phi_set``: names in signatures, headers and free text, phone and fax numbers, e-mail and
    street addresses, dates in many forms, MRNs and accession numbers (bench/deid.py compares other tools on it)."""
    from deid_sets import phi_set

    left = [(text, s) for text, secrets in phi_set() for s in secrets if s in redact_identifiers(text)]
    assert not left, left[:5]


def test_no_generated_clinical_sentence_is_changed():
    """``deid_sets.clinical_set``: 4,000 chest-CT and OCT sentences that look like identifiers and hold none."""
    from deid_sets import clinical_set

    changed = [(t, redact_identifiers(t)) for t in clinical_set() if redact_identifiers(t) != t]
    assert not changed, changed[:5]


def test_real_reports_keep_their_clinical_words():
    """CT-RATE's and Open-i's reports (already de-identified by their publishers) in ../shared/data: the
    redactor changes only what is a date or an already-masked name ("Dr. XXXX XXXX"), never a clinical
    word; the earlier redactor turned 344 Open-i reports' "identified" into "[ID]"."""
    import re
    from pathlib import Path

    from medalign.reports.report_text import clean_report

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "openi_reports" / "reports.csv").is_file():
        pytest.skip(f"{data}: the shared report sets are not here")
    for name in ("ctrate_reports", "openi_reports"):
        for row in csv.DictReader(open(data / name / "reports.csv", encoding="utf-8")):
            text = clean_report(row["report"])
            out = redact_identifiers(text)
            if out == text:
                continue
            # undo each replacement that stands for a date or a masked name: the rest must equal the report
            pattern = re.escape(out).replace(re.escape("[DATE]"), r"[\d./\-]+").replace(re.escape("[NAME]"), r"(?:Dr\. XXXX[- ]*XXXX|Dr\. XXXX)")
            assert re.fullmatch(pattern, text), (name, row["study_id"])


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
