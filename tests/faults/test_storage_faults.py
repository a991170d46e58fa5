"""A full disk or a read-only output folder: one clear line and exit code 4, never a traceback."""

from __future__ import annotations

import csv
import errno
import os
import shutil

import pytest

import medalign.prep.build as build
from medalign.cli.main import main as cli


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")])
def test_storage_errors_are_one_line(phantom_ct, tmp_path, monkeypatch, capsys, code, text):
    rows = list(csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8")))[:2]
    images = tmp_path / "images"
    for r in rows:
        shutil.copytree(phantom_ct / "images" / r["study_id"], images / r["study_id"])
    with open(tmp_path / "reports.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["study_id", "report"])
        w.writeheader()
        w.writerows({"study_id": r["study_id"], "report": r["report"]} for r in rows)

    def refuse(path, array):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(build, "atomic_save_npy", refuse)  # workers=1 prepares in this process
    out = tmp_path / "ds"
    rc = cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(out), "--config", "demo_ct", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4
    assert len(err) == 1 and text in err[0] and "volumes" in err[0], err
    assert not (out / "manifest.parquet").exists()  # nothing claims to be complete
