"""Training killed with SIGKILL between checkpoints resumes from the last one and finishes its steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import REFERENCE_STEPS, TINY_TRAIN, losses_by_step, step_of

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


def test_sigkill_then_resume(prepared_ct, reference_run, tmp_path):
    run = tmp_path / "run"
    argv = MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct",
                       "--max-steps", str(REFERENCE_STEPS), "--checkpoint-every", "4", *TINY_TRAIN]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                step = step_of(last)
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
    assert step_of(last) == killed_after

    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--resume", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert step_of(last) == REFERENCE_STEPS
    assert (run / "model" / "model.safetensors").is_file()
    resumed = losses_by_step(run)
    assert max(resumed) == REFERENCE_STEPS - 1  # Lightning logs steps from 0: the run reached its 24th

    # the same run uninterrupted: after the resume every step sees the same batch, augmentation,
    # sentence sample and dropout mask, so the losses are the same numbers
    reference = losses_by_step(reference_run)
    after = [s for s in range(killed_after, REFERENCE_STEPS)]
    assert len(after) >= 5
    for s in after:
        assert abs(resumed[s] - reference[s]) <= 1e-5 * abs(reference[s]), (s, resumed[s], reference[s])


def test_resume_needs_a_checkpoint(prepared_ct, tmp_path):
    (tmp_path / "r").mkdir()
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--resume", str(tmp_path / "r")], capture_output=True, text=True)
    assert res.returncode == 2 and "no config.yaml" in res.stderr
