"""A trained run is never lost and a long run can be watched: the rerun guard, progress lines in a
log file, SIGTERM and SLURM's SIGUSR1 stopping at a step with last.ckpt, resumes that equal an
uninterrupted run, two torchrun nodes training one run, run.json and the model card."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REFERENCE_STEPS, TINY_TRAIN, losses_by_step, step_of

from medalign.cli.main import main as cli
from medalign.errors import EXIT_PREEMPTED

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]
#: a plain progress line as a log file shows it
# the rate reads "N volumes/s", or "N s/volume" on a machine slower than one volume a second
PROGRESS_LINE = re.compile(r"^step (\d+)/(\d+) \(\d+\.\d%\) · [\d.]+ (?:volumes/s|s/volume) · loss [\d.]+ · lr [\d.]+e[-+]\d+ · ETA \w+$", re.M)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _train_until(argv: list[str], log: Path, at_step: int, sig: signal.Signals, env: dict | None = None) -> int:
    """Run ``argv`` with stderr going to the file ``log`` (not a terminal); send ``sig`` once a progress
    line reaches ``at_step``; return the exit status."""
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/", log.read_text(), re.M)]
            if steps and steps[-1] >= at_step:
                proc.send_signal(sig)
                break
            time.sleep(0.05)
        return proc.wait(timeout=300)


def test_sigterm_and_slurm_requeue_keep_the_work_and_resume_exactly(prepared_ct, reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    train = ["pretrain", "--data", str(prepared_ct), "--progress-interval", "0.01"]
    argv = MEDALIGN + train + ["--out", str(run), "--config", "demo_ct", "--max-steps", str(REFERENCE_STEPS),
                               "--checkpoint-every", "1000", *TINY_TRAIN]

    # 1. SIGTERM (a cloud or Kubernetes preemption) between two checkpoint_every saves
    code = _train_until(argv, tmp_path / "first.log", 3, signal.SIGTERM)
    log = (tmp_path / "first.log").read_text()
    assert code == EXIT_PREEMPTED, log[-3000:]
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+); checkpoints/last.ckpt holds it: continue with medalign pretrain "
                            r"--data \S+ --resume \S+", log).group(1))
    assert stopped >= 3 and step_of(last) == stopped
    assert not (run / "model").exists()
    # the log file shows progress with the run's real total, its speed and an ETA
    lines = PROGRESS_LINE.findall(log)
    assert lines and all(int(total) == REFERENCE_STEPS for _, total in lines), log[:2000]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "preempted" and record["segments"][-1]["stopped_by"] == "SIGTERM"

    # 2. the same command again does not touch the run
    before, state = _sha(last), _folder_state(run)
    capsys.readouterr()
    assert cli(argv[len(MEDALIGN):]) == 2  # refused before any training: run in this process
    err = capsys.readouterr().err
    assert f"already holds a pretraining run (checkpoints/last.ckpt at step {stopped}" in err
    assert f"--resume {run}" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert _sha(last) == before and _folder_state(run) == state

    # 3. resumed under SLURM, SIGUSR1 (--signal=SIGUSR1@120): Lightning's requeue saves hpc_ckpt_1 and
    #    calls scontrol; medalign stops at the step with last.ckpt
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (fake / "scontrol").chmod(0o755)
    slurm = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "ct1",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    code = _train_until(MEDALIGN + train + ["--resume", str(run)], tmp_path / "second.log", stopped + 3, signal.SIGUSR1, env=slurm)
    log = (tmp_path / "second.log").read_text()
    assert code == EXIT_PREEMPTED, log[-3000:]
    requeued = int(re.search(r"stopped by SIGUSR1 at step (\d+)", log).group(1))
    assert requeued >= stopped + 3 and f"resuming at step {stopped}" in log
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert step_of(run / "hpc_ckpt_1.ckpt") == requeued == step_of(last)

    # 4. resumed again, to the end: every step after the first stop equals the uninterrupted run
    res = subprocess.run(MEDALIGN + train + ["--resume", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert step_of(last) == REFERENCE_STEPS and (run / "model" / "MODEL_CARD.md").is_file()
    resumed, reference = losses_by_step(run), losses_by_step(reference_run)
    for s in range(stopped, REFERENCE_STEPS):
        assert abs(resumed[s] - reference[s]) <= 1e-5 * abs(reference[s]), (s, resumed[s], reference[s])
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["steps_done"] == REFERENCE_STEPS
    assert [(s["from_step"], s["to_step"], s.get("stopped_by")) for s in record["segments"]] == [
        (0, stopped, "SIGTERM"), (stopped, requeued, "SIGUSR1"), (requeued, REFERENCE_STEPS, None)]
    # optim.lr=3e-4 (TINY_TRAIN) is the learning rate the image tower trained with, after its warm-up
    rates = [float(r["lr-AdamW/pg1"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("lr-AdamW/pg1")]
    assert max(rates) == pytest.approx(3e-4)


def test_two_torchrun_nodes_train_one_run(prepared_ct, tmp_path):
    """``torchrun --nnodes 2 --nproc-per-node 1`` on 127.0.0.1 (gloo): both nodes finish, only rank 0
    writes (one export, one progress log, one lock), the lock does not block node 1, run.json has W=2."""
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def node(rank: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "medalign.cli.main",
                "pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "2", "--progress-interval", "0.01",
                "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy=ddp", "data.batch_size=2",
                "model.image.options.widen_factor=0.25", "model.text.trainable_layers=0", "data.sentence_sampling=0", "trainer.log_every_n_steps=1"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(node(r), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for r in (0, 1)]
    (out0, err0), (out1, err1) = (p.communicate(timeout=400) for p in procs)
    assert procs[0].returncode == 0, err0[-3000:]
    assert procs[1].returncode == 0, err1[-3000:]
    assert out0.count("model exported") == 1 and "model exported" not in out1
    assert "step 2/2" in err0 and not re.search(r"^step \d", err1, re.M)
    record = json.loads((run / "run.json").read_text())
    assert record["world_size"] == 2 and record["global_batch"] == 4 and record["steps_done"] == 2
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("train/loss")]
    assert steps == [0, 1]  # one logger: rank 0's
    assert [p.name for p in run.glob(".medalign-*.lock")] == [".medalign-pretrain.lock"]
    assert step_of(run / "checkpoints" / "last.ckpt") == 2


def test_overwrite_and_resume_are_one_or_the_other(prepared_ct, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--resume", str(tmp_path / "run"), "--overwrite"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "choose one" in res.stderr


def test_the_guard_names_what_a_folder_holds_and_overwrite_clears_it(tmp_path):
    """Unit level: the step comes from the checkpoint itself, a SLURM hpc checkpoint counts, an export
    counts, caches survive --overwrite, and an empty or untrained folder passes."""
    from medalign.train.run_folder import RunExistsError, clear_run, describe_trained, refuse_trained_folder, resume_checkpoint

    run = tmp_path / "run"
    refuse_trained_folder(run, "a pretraining run", "--resume run")  # absent: passes
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text("{}\n")
    refuse_trained_folder(run, "a pretraining run", "--resume run")  # an earlier run that saved nothing: passes
    (run / "checkpoints").mkdir()
    torch.save({"global_step": 6}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(RunExistsError, match=r"already holds a pretraining run \(checkpoints/last.ckpt at step 6\); nothing was changed"):
        refuse_trained_folder(run, "a pretraining run", "--resume run")
    torch.save({"global_step": 9}, run / "hpc_ckpt_1.ckpt")
    assert resume_checkpoint(run) == run / "hpc_ckpt_1.ckpt"  # SLURM's requeue save is newer
    assert describe_trained(run) == "hpc_ckpt_1.ckpt at step 9"
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_bytes(b"x")
    assert describe_trained(run) == "hpc_ckpt_1.ckpt at step 9 and an exported model (model/)"
    refuse_trained_folder(run, "a pretraining run", "--resume run", overwrite=True)  # passes: the caller replaces it
    (run / "cache").mkdir()
    (run / "cache" / "kept").write_text("x")
    clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["cache"] and describe_trained(run) is None


def test_learning_rates_as_people_write_them_reach_the_run(prepared_ct, tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("base: demo_ct\noptim:\n  lr: 1e-3\n  text_lr: 5E-5\n")
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--config", str(preset), "--print-config", "optim.weight_decay=1e-2",
                                     "trainer.max_steps=1_000"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    import yaml

    optim = yaml.safe_load(res.stdout)["optim"]
    assert (optim["lr"], optim["text_lr"], optim["weight_decay"]) == (0.001, 5e-05, 0.01)
    assert yaml.safe_load(res.stdout)["trainer"]["max_steps"] == 1000
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--print-config", "optim.lr=3e-4"], capture_output=True, text=True)
    assert yaml.safe_load(res.stdout)["optim"]["lr"] == 3e-4


def test_run_record_and_model_card(trained_run, prepared_ct):
    """run.json says what the run was; the export's MODEL_CARD.md says what the model is for, on what it
    was trained, its validation AUROC with CIs, where its thresholds come from and that it knows only phantoms."""
    record = json.loads((trained_run / "run.json").read_text())
    assert record["status"] == "finished" and record["steps_done"] == 16 and record["world_size"] == 1 and record["global_batch"] == 8
    assert record["dataset"]["manifest_sha256"] == hashlib.sha256((prepared_ct / "manifest.parquet").read_bytes()).hexdigest()
    assert record["dataset"]["scanners"] == {"medalign phantom": sum(record["dataset"]["studies"].values())}
    assert record["versions"]["torch"] == torch.__version__ and record["segments"][0]["command"][:2] == ["medalign", "pretrain"]
    assert record["preset"] == "demo_ct" and record["volumes_per_s"] > 0
    model = trained_run / "model"
    validation = json.loads((model / "validation.json").read_text())
    thresholds = json.loads((model / "thresholds.json").read_text())["thresholds"]
    card = (model / "MODEL_CARD.md").read_text()
    for heading in ("## Intended use", "## Training data", "## Training", "## Validation", "## Thresholds", "## Limits", "## How to use it"):
        assert heading in card
    assert "Trained on medalign's synthetic phantoms only" in card
    assert f"Studies per split: train {record['dataset']['studies']['train']}" in card
    evaluated = {name: v for name, v in validation["per_finding"].items() if v["auroc"] is not None}
    assert evaluated
    for name, v in evaluated.items():
        lo, hi = v["auroc_ci95"]
        assert lo <= v["auroc"] <= hi
        assert f"| {name} | {v['n']} | {v['n_positive']} | {v['auroc']:.3f} | {lo:.2f}–{hi:.2f} |" in card
    for name, value in thresholds.items():
        assert f"- {name}: {value:.3f}" in card
    # a finding no training study has is said to rest on the text tower alone
    unseen = [n for n, k in record["dataset"]["positives"]["train"].items() if k == 0]
    if unseen:
        assert f"No positive training study for {', '.join(unseen)}" in card
