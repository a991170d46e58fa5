"""Fault injection for reports: empty, non-UTF-8, HTML/RTF remnants, very long, duplicate or missing ids."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq

from medalign.cli.main import main as cli

REPORTS = [
    ("empty", b"   "),
    ("cp1252", "FINDINGS: Mild cardiomegaly. Caf\xe9 noted. No pleural effusion.".encode("cp1252")),
    ("html", b"<html><body><p>FINDINGS: Mild <b>cardiomegaly</b>.</p><p>No pleural effusion.</p></body></html>"),
    ("rtf", b"{\\rtf1\\ansi\\deff0 {\\fonttbl{\\f0 Arial;}} FINDINGS: Mild cardiomegaly.\\par No pleural effusion.\\par}"),
    ("long", ("FINDINGS: Mild cardiomegaly. " + "Lungs are clear. " * 6000).encode()),
    ("duplicate_conflict", b"FINDINGS: No cardiomegaly."),
    ("duplicate_conflict", b"FINDINGS: Large pleural effusion."),
    ("duplicate_same", b"FINDINGS: Mild cardiomegaly."),
    ("duplicate_same", b"FINDINGS: Mild cardiomegaly."),
    ("report_without_study", b"FINDINGS: Emphysema."),
]


def test_report_faults(phantom_ct, tmp_path):
    images = tmp_path / "images"
    sources = sorted(p.name for p in (phantom_ct / "images").iterdir())
    study_ids = ["empty", "cp1252", "html", "rtf", "long", "duplicate_conflict", "duplicate_same", "study_without_report"]
    for sid, src in zip(study_ids, sources):
        shutil.copytree(phantom_ct / "images" / src, images / sid)
    with open(tmp_path / "reports.csv", "wb") as f:
        f.write(b"study_id,report\n")
        for sid, text in REPORTS:
            f.write(sid.encode() + b',"' + text.replace(b'"', b'""') + b'"\n')
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(out), "--config", "demo_ct"]) == 3
    errors = {e["study_id"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text(encoding="utf-8").splitlines())}
    assert errors == {
        "empty": "reports.csv: empty report",
        "duplicate_conflict": "reports.csv: several different reports for this study_id",
        "study_without_report": "no report for this study",
    }
    log = (out / "prep.log").read_text(encoding="utf-8")
    assert "report_without_study" in log and "duplicate_same" in log
    table = pq.read_table(out / "manifest.parquet").to_pydict()
    rows = {sid: {k: table[k][i] for k in table} for i, sid in enumerate(table["study_id"])}
    assert set(rows) == {"cp1252", "html", "rtf", "long", "duplicate_same"}
    for sid in ("cp1252", "html", "rtf"):
        text = rows[sid]["report"]
        assert "<" not in text and "\\" not in text and "{" not in text and "Arial" not in text, text
        assert rows[sid]["cardiomegaly"] == 1 and rows[sid]["pleural effusion"] == 0
    assert "Café" in rows["cp1252"]["report"]  # Windows-1252 decoded, not mangled
    assert rows["long"]["cardiomegaly"] == 1
