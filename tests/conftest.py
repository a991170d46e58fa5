"""Shared fixtures: offline Hugging Face, a small phantom CT set, its prepared dataset, a briefly trained model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import csv  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from medalign.cli.main import main as cli  # noqa: E402

N_STUDIES = 48


@pytest.fixture(scope="session")
def phantom_ct(tmp_path_factory) -> Path:
    """48 phantom CT studies (DICOM, shuffled files, some localizers) with reports and labels."""
    out = tmp_path_factory.mktemp("phantom_ct")
    assert cli(["synth", "--out", str(out), "--studies", str(N_STUDIES), "--seed", "7"]) == 0
    return out


@pytest.fixture(scope="session")
def prepared_ct(phantom_ct, tmp_path_factory) -> Path:
    """The phantom set prepared with the demo_ct preset."""
    out = tmp_path_factory.mktemp("dataset") / "ds"
    code = cli(["prep", "--images", str(phantom_ct / "images"), "--reports", str(phantom_ct / "reports.csv"), "--out", str(out), "--config", "demo_ct"])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def trained_run(prepared_ct, tmp_path_factory) -> Path:
    """A run folder trained for a few steps (small batch) and exported."""
    run = tmp_path_factory.mktemp("run") / "run"
    code = cli([
        "pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "16",
        "data.batch_size=8", "model.image.options.widen_factor=0.25", "optim.warmup_steps=2", "trainer.log_every_n_steps=1",
    ])
    assert code == 0
    return run


def phantom_export(phantom_ct: Path, dst: Path, n: int) -> tuple[Path, Path]:
    """The first ``n`` phantom studies copied as an export: ``dst/images/<id>/`` and ``dst/reports.csv``
    (study_id, report; no split column). Returns (images, reports)."""
    rows = list(csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8")))[:n]
    images = dst / "images"
    for r in rows:
        shutil.copytree(phantom_ct / "images" / r["study_id"], images / r["study_id"])
    reports = dst / "reports.csv"
    with open(reports, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["study_id", "report"])
        w.writeheader()
        w.writerows({"study_id": r["study_id"], "report": r["report"]} for r in rows)
    return images, reports
