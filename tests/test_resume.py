"""Training killed with SIGKILL between checkpoints resumes from the last one and finishes its steps."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import torch

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]
TINY = ["data.batch_size=8", "model.image.options.widen_factor=0.25", "optim.warmup_steps=2", "trainer.log_every_n_steps=1",
        "trainer.deterministic=true", "data.crop_scale=0.9", "data.flip_axes=[0]", "data.intensity_on=device"]


def _losses(run) -> dict[int, float]:
    """Training loss per step (the last row wins: a resumed run logs its steps again)."""
    return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("train/loss")}


def _step_of(ckpt) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def test_sigkill_then_resume(prepared_ct, tmp_path):
    run = tmp_path / "run"
    argv = MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct",
                       "--max-steps", "24", "--checkpoint-every", "4", *TINY]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                step = _step_of(last)
            except Exception:  # noqa: BLE001 - the rename makes this impossible, but never hang the test on it
                step = -1
            if step >= 8:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_after = step
                break
        time.sleep(0.2)
    proc.wait(timeout=30)
    assert killed_after is not None, "training ended before it could be killed"
    assert not (run / "model").exists()  # it never reached the export
    assert _step_of(last) == killed_after

    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--resume", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _step_of(last) == 24
    assert (run / "model" / "model.safetensors").is_file()
    resumed = _losses(run)
    assert max(resumed) == 23  # Lightning logs steps from 0: the run reached its 24th

    # the same run uninterrupted: after the resume every step sees the same batch, augmentation,
    # sentence sample and dropout mask, so the losses are the same numbers
    ref = tmp_path / "ref"
    res = subprocess.run([a if a != str(run) else str(ref) for a in argv], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    reference = _losses(ref)
    after = [s for s in range(killed_after, 24)]
    assert len(after) >= 10
    for s in after:
        assert abs(resumed[s] - reference[s]) <= 1e-5 * abs(reference[s]), (s, resumed[s], reference[s])


def test_resume_needs_a_checkpoint(prepared_ct, tmp_path):
    (tmp_path / "r").mkdir()
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--resume", str(tmp_path / "r")], capture_output=True, text=True)
    assert res.returncode == 2 and "no config.yaml" in res.stderr
