"""Preparation killed with SIGKILL at random moments, five times, then finished: the dataset is
byte-for-byte the one an uninterrupted run writes."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
from conftest import phantom_export

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


def _digest(dataset) -> tuple[list, dict]:
    table = pq.read_table(dataset / "manifest.parquet").to_pylist()
    rows = sorted(table, key=lambda r: r["study_id"])
    volumes = {p.relative_to(dataset).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((dataset / "volumes").rglob("*.npy"))}
    return rows, volumes


def test_five_sigkills_then_resume_equal_one_run(phantom_ct, tmp_path):
    images, reports = phantom_export(phantom_ct, tmp_path, 24)
    argv = ["prep", "--images", str(images), "--reports", str(reports), "--config", "demo_ct", "--workers", "2"]

    reference = tmp_path / "reference"
    assert subprocess.run(MEDALIGN + argv + ["--out", str(reference)], capture_output=True).returncode == 0

    out = tmp_path / "killed"
    rng = random.Random(3)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(MEDALIGN + argv + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(1.0, 4.0))  # interpreter start-up is ~1-2 s; studies finish in tens of ms each
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3  # most runs really were cut short
    assert subprocess.run(MEDALIGN + argv + ["--out", str(out)], capture_output=True).returncode == 0
    assert _digest(out) == _digest(reference)
    # no temporary file survives; the writer's lock file stays by design (unheld once its holder died)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or (p.name.startswith(".") and not p.name.startswith(".medalign-"))]
    assert leftovers == [], leftovers
