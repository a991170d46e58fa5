"""``medalign finetune`` under Lightning: killed and resumed equals uninterrupted; DDP on two CPU ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from medalign.cli.main import main as cli

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


def _argv(trained_run, prepared_ct, phantom_ct, out, *extra) -> list[str]:
    return MEDALIGN + ["finetune", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(out),
                       "--labels", str(phantom_ct / "labels.csv"), "--epochs", "4", "--batch-size", "8", "--device", "cpu", *extra]


def _epoch_of(ckpt) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"])


def test_finetune_killed_then_resumed_equals_uninterrupted(trained_run, prepared_ct, phantom_ct, tmp_path, capsys):
    whole = tmp_path / "whole"
    res = subprocess.run(_argv(trained_run, prepared_ct, phantom_ct, whole), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_argv(trained_run, prepared_ct, phantom_ct, cut), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    last = cut / "checkpoints" / "last.ckpt"
    killed = False
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():  # written atomically after the first epoch's validation
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed, "fine-tuning ended before it could be killed"
    assert not (cut / "metrics.json").exists()
    assert _epoch_of(last) < 3

    res = subprocess.run(_argv(trained_run, prepared_ct, phantom_ct, cut, "--resume"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    # the resumed run saw the same batches, augmentations and learning rates: the same weights, bit for bit
    a, b = load_file(str(whole / "classifier.safetensors")), load_file(str(cut / "classifier.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert ma["per_finding"] == mb["per_finding"] and ma["epoch_chosen"] == mb["epoch_chosen"]
    # last.ckpt is written after "best" took the epoch's score: it carries the best so far (what a resume continues from)
    import csv

    state = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["callbacks"]
    best_state = next(v for k, v in state.items() if "val/macro_auroc" in k)
    logged = [float(r["val/macro_auroc"]) for r in csv.DictReader(open(whole / "logs" / "metrics.csv")) if r.get("val/macro_auroc")]
    assert abs(float(best_state["best_model_score"]) - max(logged)) < 1e-6
    assert _epoch_of(last) == 3

    # the refusals come before any training: run in this process (no interpreter start-up)
    capsys.readouterr()
    assert cli(_argv(trained_run, prepared_ct, phantom_ct, tmp_path / "never", "--resume")[len(MEDALIGN):]) == 2
    assert "nothing to resume" in capsys.readouterr().err

    # the same command into the finished run changes nothing
    kept = {p.name: p.stat().st_mtime_ns for p in whole.iterdir() if p.is_file()}
    assert cli(_argv(trained_run, prepared_ct, phantom_ct, whole)[len(MEDALIGN):]) == 2
    err = capsys.readouterr().err
    assert f"{whole}: already holds a fine-tuning run (checkpoints/last.ckpt at step" in err
    assert "an exported model" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in whole.iterdir() if p.is_file()} == kept


def test_finetune_runs_data_parallel_on_two_cpu_processes(trained_run, prepared_ct, phantom_ct, tmp_path):
    """Lightning DDP on 2 CPU ranks: validation gathers both ranks' rows, rank 0 alone evaluates and writes."""
    out = tmp_path / "ddp"
    res = subprocess.run(_argv(trained_run, prepared_ct, phantom_ct, out, "--devices", "2", "--strategy", "ddp", "--epochs", "2"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("test macro AUROC") == 1
    m = json.loads((out / "metrics.json").read_text())
    assert m["devices"] == 2 and m["batch_size_per_device"] == 8 and 0 <= m["epoch_chosen"] < 2
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()

    # the logged val AUROC of the last epoch is the whole val split's (both ranks' halves), as scikit-learn scores it
    import csv

    from sklearn.metrics import roc_auc_score

    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest
    from medalign.models.image import ImageEncoder
    from medalign.tasks.finetune import FindingClassifier
    from medalign.tasks.zeroshot import read_label_csv

    logged = [float(r["val/macro_auroc"]) for r in csv.DictReader(open(out / "logs" / "metrics.csv")) if r.get("val/macro_auroc")]
    assert len(logged) == 2
    spec = json.loads((out / "classifier.json").read_text())
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    model = FindingClassifier(ImageEncoder(spec["image"]["name"], 8, spec["image"]["options"]), len(spec["findings"]))
    model.load_state_dict({k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.") and ".proj." not in k}, strict=False)
    model.eval()
    val = read_manifest(prepared_ct).subset("val")
    truth = read_label_csv(phantom_ct / "labels.csv", val.columns["study_id"], spec["findings"])
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.stack([StudyDataset(val)[i]["image"] for i in range(len(val))]))).numpy()
    aurocs = [roc_auc_score(truth[:, k] > 0.5, probs[:, k]) for k in range(truth.shape[1]) if 0 < (truth[:, k] > 0.5).sum() < len(val)]
    assert len(val) >= 4 and abs(sum(aurocs) / len(aurocs) - logged[-1]) < 1e-5
