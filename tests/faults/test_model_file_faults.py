"""Fault injection for files medalign loads: checkpoints that would run code, truncated weights, foreign indexes."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line_exit_2(res) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_a_checkpoint_that_would_execute_code_is_refused(trained_run, prepared_ct, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("model"))
    marker = tmp_path / "pwned"
    with open(run / "checkpoints" / "last.ckpt", "wb") as f:
        pickle.dump({"state_dict": _RunsCode(marker)}, f)
    line = _one_line_exit_2(subprocess.run(MEDALIGN + ["export", str(run)], capture_output=True, text=True))
    assert "last.ckpt" in line and "not a loadable checkpoint" in line
    assert not marker.exists()  # weights_only loading never ran the payload
    line = _one_line_exit_2(subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--resume", str(run)], capture_output=True, text=True))
    assert "last.ckpt" in line and not marker.exists()


def test_truncated_safetensors_is_a_clear_error(trained_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_run / "model", model)
    w = model / "model.safetensors"
    w.write_bytes(w.read_bytes()[:5000])
    line = _one_line_exit_2(subprocess.run(MEDALIGN + ["zeroshot", "--checkpoint", str(model), "--study", str(tmp_path)], capture_output=True, text=True))
    assert "model.safetensors" in line


def test_an_index_built_with_another_model_is_refused(trained_run, prepared_ct, tmp_path):
    index = tmp_path / "index"
    assert subprocess.run(MEDALIGN + ["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index), "--split", "test"],
                          capture_output=True).returncode == 0
    other = tmp_path / "other"
    shutil.copytree(trained_run / "model", other)
    from safetensors.torch import load_file, save_file

    w = load_file(str(other / "model.safetensors"))
    w["logit_scale"] = w["logit_scale"] + 1.0
    save_file(w, str(other / "model.safetensors"))
    info = (index / "index.json").read_text().replace(str((trained_run / "model").resolve()), str(other.resolve()))
    (index / "index.json").write_text(info)
    line = _one_line_exit_2(subprocess.run(MEDALIGN + ["retrieve", "--index", str(index), "--text", "effusion", "--out", str(tmp_path / "q")],
                                           capture_output=True, text=True))
    assert "another model" in line
