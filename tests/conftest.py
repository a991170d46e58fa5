"""Shared fixtures: offline Hugging Face, a small phantom CT set, its prepared dataset, a briefly trained model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# progress lines at their 30 s default would interleave with the one-line errors tests read, as the
# suite's pace varies; the tests of progress itself pass --progress-interval
os.environ["MEDALIGN_PROGRESS_INTERVAL"] = "3600"

import csv  # noqa: E402
import gc  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pydicom  # noqa: E402
import pytest  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

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


# a small, fast and deterministic pretraining run: every resume test compares against the same reference
TINY_TRAIN = ["data.batch_size=8", "model.image.options.widen_factor=0.25", "optim.warmup_steps=2", "optim.lr=3e-4",
              "trainer.log_every_n_steps=1", "trainer.deterministic=true", "data.crop_scale=0.9", "data.flip_axes=[0]",
              "data.intensity_on=device"]
REFERENCE_STEPS = 14


def losses_by_step(run: Path) -> dict[int, float]:
    """Training loss per step from ``RUN/logs/metrics.csv`` (the last row wins: a resumed run logs its steps again)."""
    return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("train/loss")}


def step_of(ckpt: Path) -> int:
    """The optimizer step a Lightning checkpoint holds."""
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="session")
def reference_run(prepared_ct, tmp_path_factory) -> Path:
    """``TINY_TRAIN`` for ``REFERENCE_STEPS`` steps uninterrupted: what a stopped and resumed run must equal."""
    import subprocess

    run = tmp_path_factory.mktemp("reference") / "run"
    res = subprocess.run([sys.executable, "-m", "medalign.cli.main", "pretrain", "--data", str(prepared_ct), "--out", str(run),
                          "--config", "demo_ct", "--max-steps", str(REFERENCE_STEPS), "--checkpoint-every", "1000", *TINY_TRAIN],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
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


# A real CT series (pydicom's dicomdirtests CT5N: 5 axial 16x16 slices) and the exports built from it
CT5N = Path(get_testdata_file("dicomdirtests/98892001/CT5N/2062", download=False)).parent
REAL_CT_CONFIG = ("modality: ct\nvocab: chest_ct\nseries: {modalities: [CT], planes: [], min_slices: 3}\n"
                  "steps:\n  - orientation: {axcodes: RAS}\n  - spacing: {pixdim: [4.0, 4.0, 4.0]}\n"
                  "  - window: {a_min: -1000.0, a_max: 400.0}\n  - crop_or_pad: {spatial_size: [16, 16, 8]}\n")


def copy_real_series(dst: Path, patient_id: str | None = None, new_study: bool = False, accession: str | None = None,
                     prefix: str = "", hu_offset: int = 0, blank_ids: bool = False) -> list[Path]:
    """CT5N's files under ``dst`` (named ``prefix`` + the original name); with ``new_study`` they become
    another study (new UIDs); ``hu_offset`` shifts every stored value, so a test can tell the studies'
    pixels apart; ``blank_ids`` empties StudyInstanceUID, SeriesInstanceUID and AccessionNumber."""
    dst.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    out = []
    for f in sorted(p for p in CT5N.iterdir() if p.is_file()):
        ds = pydicom.dcmread(f)
        if new_study:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if patient_id is not None:
            ds.PatientID = patient_id
        if accession is not None:
            ds.AccessionNumber = accession
        if hu_offset:
            ds.PixelData = (ds.pixel_array.astype("int32") + hu_offset).astype(ds.pixel_array.dtype).tobytes()
        if blank_ids:
            ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.AccessionNumber = ""
        name = prefix + f.name
        target = dst / (name + ("_b" if (dst / name).exists() else ""))
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


def by_position(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def write_reports(path: Path, ids: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "report"])
        for sid in ids:
            w.writerow([sid, f"Report of {sid}: no pleural effusion."])


def run_gloo_ranks(work: Callable[[int, str], None], out: Path, world: int = 2) -> None:
    """Run ``work(rank, out)`` (a module-level function: it is pickled) on ``world`` spawned CPU
    processes joined in one gloo process group; a rank that raises fails the call."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gloo_rank, args=(work, port, world, str(out)), nprocs=world, start_method="spawn", join=True)


def _gloo_rank(rank: int, work: Callable[[int, str], None], port: int, world: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    work(rank, out)
    dist.barrier()  # neither rank tears gloo down while the other still has work on it
    dist.destroy_process_group()
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    # leave without interpreter finalisation: gloo threads torn down during it can abort (SIGABRT) a
    # rank whose results are already saved (seen once in a full run, never alone)
    os._exit(0)
