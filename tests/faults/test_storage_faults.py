"""A full disk or a read-only output folder: one clear line and exit code 4, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import phantom_export

import medalign.prep.pipeline as pipeline
from medalign.cli.main import main as cli


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system")])
def test_storage_errors_are_one_line(phantom_ct, tmp_path, monkeypatch, capsys, code, text):
    images, _ = phantom_export(phantom_ct, tmp_path, 2)

    def refuse(path, array):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(pipeline, "atomic_save_npy", refuse)  # workers=1 prepares in this process
    out = tmp_path / "ds"
    rc = cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(out), "--config", "demo_ct", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4
    assert len(err) == 1 and text in err[0] and "volumes" in err[0], err
    assert not (out / "manifest.parquet").exists()  # nothing claims to be complete


# --- a full disk, a file-size limit, a short write, two writers ---------------------------------

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]
#: demo_ct without its fixed output size: prep cannot estimate the space, so the disk fills mid-run
UNSIZED = ("modality: ct\nvocab: chest_ct\nseries: {modalities: [CT], planes: [axial], min_slices: 8}\n"
           "steps:\n  - orientation: {axcodes: RAS}\n  - spacing: {pixdim: [8.0, 8.0, 7.5]}\n"
           "  - window: {a_min: -1000.0, a_max: 400.0}\ncache_dtype: uint8\nworkers: 2\n")


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB tmpfs (needs root; skipped where mounting is refused), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _one_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return lines[0]


def test_a_disk_that_fills_mid_run_then_resume(phantom_ct, tmp_path, tiny_fs):
    images, reports = phantom_export(phantom_ct, tmp_path, 24)
    (tmp_path / "p.yaml").write_text(UNSIZED)
    out = tiny_fs / "ds"
    cmd = MEDALIGN + ["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(tmp_path / "p.yaml")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 4, res.stderr[-3000:]
    line = _one_line(res)
    assert "disk full, " in line and "MiB free on" in line and str(out) in line  # numpy: a short write, no errno
    assert not list(out.rglob("*.tmp")), "a partial file was left behind"
    done_before = {p.name for p in (out / "records").iterdir()} if (out / "records").exists() else set()
    assert len(done_before) < 24
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_fs)], check=True)  # space freed
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(pq.read_table(out / "manifest.parquet")) == 24
    assert f"{len(done_before)} already done" in res.stdout


def test_prep_checks_free_space_before_it_starts(phantom_ct, tmp_path, tiny_fs):
    images, reports = phantom_export(phantom_ct, tmp_path, 24)
    out = tiny_fs / "ds"
    res = subprocess.run(MEDALIGN + ["prep", "--images", str(images), "--reports", str(reports), "--out", str(out),
                                     "--config", "demo_ct"], capture_output=True, text=True)
    assert res.returncode == 4
    line = _one_line(res)
    assert "needed for 24 studies" in line and "MiB free" in line
    assert not (out / "volumes").exists()  # refused before any work


def test_a_file_size_limit_is_one_line(phantom_ct, tmp_path):
    images, reports = phantom_export(phantom_ct, tmp_path, 2)
    limit = 50_000  # a cached demo volume is 92 KB

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run(MEDALIGN + ["prep", "--images", str(images), "--reports", str(reports), "--out", str(tmp_path / "ds"),
                                     "--config", "demo_ct", "--workers", "1"], capture_output=True, text=True, preexec_fn=cap)
    assert res.returncode == 4
    assert "file size limit" in _one_line(res)
    assert not list((tmp_path / "ds").rglob("*.tmp"))


def test_a_short_write_without_errno_is_one_line(phantom_ct, tmp_path, monkeypatch, capsys):
    """numpy's save on a full disk raises OSError("N requested and M written"), no errno."""
    import medalign.io.atomic as atomic

    images, reports = phantom_export(phantom_ct, tmp_path, 2)

    def short_save(f, array):
        f.write(b"\x93NUMPY" + b"\0" * 100)
        raise OSError(f"{array.nbytes} requested and 106 written")

    monkeypatch.setattr(atomic.np, "save", short_save)
    rc = cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(tmp_path / "ds"), "--config", "demo_ct", "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 4 and len(err) == 1 and "short write: disk full" in err[0] and "volumes" in err[0], err
    assert not list((tmp_path / "ds").rglob("*.tmp")) and not list((tmp_path / "ds" / "volumes").glob("*.npy"))


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(prepared_ct, tmp_path, monkeypatch, capsys):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from medalign.train.checkpointing import AtomicCheckpointIO

    calls = {"n": 0}
    real = TorchCheckpointIO.save_checkpoint

    def fill_up(self, checkpoint, path, storage_options=None):
        calls["n"] += 1
        if calls["n"] >= 2:  # a short write without errno, as a full disk gives a buffered writer
            Path(path).write_bytes(b"PK\x03\x04 partial")
            raise OSError("4194304 requested and 10 written")
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", fill_up)
    run = tmp_path / "run"
    rc = cli(["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "3",
              "--checkpoint-every", "1", "data.batch_size=4", "model.image.options.widen_factor=0.25"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medalign")]
    assert rc == 4 and len(err) == 1 and "short write: disk full" in err[0] and "last.ckpt" in err[0], err
    last = run / "checkpoints" / "last.ckpt"
    assert not list(last.parent.glob(".*.tmp"))
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", real)
    state = AtomicCheckpointIO().load_checkpoint(last)  # the previous checkpoint, whole and loadable
    assert state["global_step"] == 1
    # space freed: the run resumes from it and finishes
    assert cli(["pretrain", "--data", str(prepared_ct), "--resume", str(run), "--max-steps", "3"]) == 0
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 3


def test_index_onto_a_full_disk(trained_run, prepared_ct, tiny_fs):
    subprocess.run(["mount", "-o", "remount,size=64k", str(tiny_fs)], check=True)
    res = subprocess.run(MEDALIGN + ["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(tiny_fs / "idx")],
                         capture_output=True, text=True)
    assert res.returncode == 4
    assert "disk full" in _one_line(res)
    assert not list((tiny_fs / "idx").rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_fs)], check=True)  # space freed: the same command completes
    res = subprocess.run(MEDALIGN + ["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(tiny_fs / "idx")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tiny_fs / "idx" / "index.json").read_text())["count"] > 0


def test_pretrain_onto_a_small_disk_is_one_line(prepared_ct, tiny_fs):
    """A real small file system: logs and caches fit, the first checkpoint does not."""
    subprocess.run(["mount", "-o", "remount,size=3m", str(tiny_fs)], check=True)
    run = tiny_fs / "run"
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "3",
                                     "--checkpoint-every", "1", "data.batch_size=4", "model.image.options.widen_factor=0.25"],
                         capture_output=True, text=True)
    assert res.returncode == 4, res.stderr[-3000:]
    line = [x for x in res.stderr.splitlines() if x.startswith("medalign")]
    assert len(line) == 1 and "checkpoints/last.ckpt" in line[0] and "disk full" in line[0] and "Traceback" not in res.stderr
    assert not list((run / "checkpoints").iterdir())  # no partial checkpoint


def test_index_under_a_file_size_limit_is_one_line(trained_run, prepared_ct, tmp_path):
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the study embeddings take 98 KB

    res = subprocess.run(MEDALIGN + ["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(tmp_path / "idx")],
                         capture_output=True, text=True, preexec_fn=cap)
    assert res.returncode == 4
    assert "file size limit" in _one_line(res)
    assert not list((tmp_path / "idx").rglob("*.tmp"))


def test_index_with_a_short_write_is_one_line(trained_run, prepared_ct, tmp_path, monkeypatch, capsys):
    import medalign.io.atomic as atomic

    def short_save(f, array):
        f.write(b"\x93NUMPY")
        raise OSError(f"{array.nbytes} requested and 6 written")

    monkeypatch.setattr(atomic.np, "save", short_save)
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(tmp_path / "idx")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study_embeddings.npy" in err[0] and "short write" in err[0], err
    assert not list((tmp_path / "idx").rglob("*.tmp")) and not (tmp_path / "idx" / "index.json").exists()


def test_checkpointing_under_a_file_size_limit_is_one_line(prepared_ct, tmp_path):
    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))  # logs and caches fit; a checkpoint does not

    run = tmp_path / "run"
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "3",
                                     "--checkpoint-every", "1", "data.batch_size=4", "model.image.options.widen_factor=0.25"],
                         capture_output=True, text=True, preexec_fn=cap)
    assert res.returncode == 4, res.stderr[-3000:]
    line = [x for x in res.stderr.splitlines() if x.startswith("medalign")]
    assert len(line) == 1 and "last.ckpt" in line[0] and "file size limit" in line[0] and "Traceback" not in res.stderr
    assert not list((run / "checkpoints").iterdir())


def test_a_second_prep_on_the_same_folder_stops_naming_the_holder(phantom_ct, tmp_path):
    images, reports = phantom_export(phantom_ct, tmp_path, 24)
    out = tmp_path / "ds"
    cmd = MEDALIGN + ["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", "demo_ct", "--workers", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / ".medalign-prep.lock"
        deadline = time.time() + 60
        while not (lock.is_file() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == first.pid
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2
        line = _one_line(res)
        assert f"pid {first.pid}" in line and "another medalign prep is writing here" in line
    finally:
        first.kill()
        first.wait()
    # the holder is dead: its lock file stays, but nothing holds it, so the next prep goes ahead
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


def test_shards_share_a_folder_and_locks_are_per_shard(tmp_path):
    from medalign.errors import BusyError
    from medalign.io.lock import output_lock

    with output_lock(tmp_path, "prep.shard-0-of-2"), output_lock(tmp_path, "prep.shard-1-of-2"):
        with pytest.raises(BusyError, match="pid"):
            with output_lock(tmp_path, "prep.shard-0-of-2"):
                pass
