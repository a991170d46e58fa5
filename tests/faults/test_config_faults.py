"""Fault injection for configuration and options: one line naming the file or key, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


def _one_line_exit_2(argv) -> str:
    res = subprocess.run(MEDALIGN + argv, capture_output=True, text=True)
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


@pytest.fixture
def dataset(prepared_ct):
    return str(prepared_ct)


def test_unknown_key_in_a_yaml_file(dataset, tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("model:\n  embed_dim: 64\n  imagee:\n    name: resnet10_3d\n")
    line = _one_line_exit_2(["pretrain", "--data", dataset, "--out", str(tmp_path / "r"), "--config", str(cfg), "--print-config"])
    assert "train.yaml" in line and "imagee" in line


def test_wrong_type_in_an_override(dataset, tmp_path):
    line = _one_line_exit_2(["pretrain", "--data", dataset, "--out", str(tmp_path / "r"), "--config", "demo_ct", "data.batch_size=big", "--print-config"])
    assert "data.batch_size" in line


def test_unknown_override_key(dataset, tmp_path):
    line = _one_line_exit_2(["pretrain", "--data", dataset, "--out", str(tmp_path / "r"), "--config", "demo_ct", "optim.learning_rate=1e-3", "--print-config"])
    assert "learning_rate" in line


def test_a_strategy_this_machine_cannot_run(dataset, tmp_path):
    """Lightning's FSDP needs CUDA GPUs: asked of a CPU it is one line naming the strategy, not a traceback."""
    line = _one_line_exit_2(["pretrain", "--data", dataset, "--out", str(tmp_path / "r"), "--config", "demo_ct", "--max-steps", "1",
                             "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=fsdp"])
    assert "error: trainer:" in line and "fsdp" in line.lower()


def test_missing_paths(tmp_path):
    line = _one_line_exit_2(["prep", "--images", str(tmp_path / "nope"), "--reports", str(tmp_path / "r.csv"), "--out", str(tmp_path / "ds")])
    assert "nope" in line
    line = _one_line_exit_2(["zeroshot", "--checkpoint", str(tmp_path / "no_run"), "--study", str(tmp_path)])
    assert "no_run" in line


def test_vocabulary_with_a_duplicate_finding(phantom_ct, tmp_path):
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("findings:\n  - name: effusion\n    synonyms: [effusion]\n  - name: effusion\n    synonyms: [fluid]\n")
    line = _one_line_exit_2(["label", "--reports", str(phantom_ct / "reports.csv"), "--out", str(tmp_path / "l.csv"), "--vocab", str(vocab)])
    assert "vocab.yaml" in line and "duplicate finding 'effusion'" in line
