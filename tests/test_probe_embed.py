"""``medalign embed`` (cached once per model and dataset) and ``medalign probe`` (linear probes)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from medalign.cli.main import main as cli
from medalign.tasks.probe import probe_auroc, run_probes, subsample

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


def test_probe_recovers_a_linear_finding_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16))
    y = (x[:, 3] + 0.1 * rng.normal(size=2000) > 0).astype(float)
    noise = rng.integers(0, 2, size=2000).astype(float)
    assert probe_auroc(x[:1000], y[:1000] > 0.5, x[1000:], y[1000:] > 0.5) > 0.97
    assert abs(probe_auroc(x[:1000], noise[:1000] > 0.5, x[1000:], noise[1000:] > 0.5) - 0.5) < 0.08  # ~4 standard errors
    assert np.isnan(probe_auroc(x[:10], np.zeros(10, bool), x[300:], y[300:] > 0.5))  # one class only: not scorable, never 0.5
    r = run_probes(x[:1000], np.stack([y, noise], 1)[:1000], x[1000:], np.stack([y, noise], 1)[1000:], ["lin", "noise"], [0.1, 1.0], seeds=2)
    assert r["1.0"]["per_finding"]["lin"] > r["0.1"]["per_finding"]["lin"] - 0.05 > 0.85


def test_subsample_sizes():
    assert len(subsample(1000, 0.01, 0)) == 10 and len(subsample(100, 0.01, 0)) == 4 and len(subsample(50, 1.0, 0)) == 50
    assert (subsample(1000, 0.1, 1) == subsample(1000, 0.1, 1)).all()


def test_embed_is_cached_and_matches_the_model(trained_run, prepared_ct, tmp_path):
    from medalign.prep.manifest import read_manifest
    from medalign.tasks.embeddings import EMBEDDINGS, load_embeddings
    from medalign.tasks.model_io import load_model

    out = tmp_path / "emb"
    res = subprocess.run(MEDALIGN + ["embed", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0 and "written to" in res.stdout, res.stderr
    first = (out / EMBEDDINGS).stat().st_mtime_ns
    res = subprocess.run(MEDALIGN + ["embed", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0 and "up to date" in res.stdout and (out / EMBEDDINGS).stat().st_mtime_ns == first
    emb = load_embeddings(out)
    manifest = read_manifest(prepared_ct)
    assert emb["study"].shape[0] == len(manifest) and emb["study_id"] == manifest.columns["study_id"]
    model, _ = load_model(trained_run, "cpu")
    i = len(manifest) // 2
    volume = torch.from_numpy(np.load(manifest.volume_path(i)))[None, None]  # uint8 cache: encode_image scales it
    with torch.no_grad():
        direct = model.encode_image(volume)[0].numpy()
    np.testing.assert_allclose(emb["study"][i], direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb["report"], axis=1), 1.0, atol=1e-5)


def test_probe_command_writes_metrics_and_plot(trained_run, prepared_ct, tmp_path, capsys):
    out = tmp_path / "probe"
    res = subprocess.run(MEDALIGN + ["probe", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(out),
                                     "--fractions", "0.5", "1.0", "--seeds", "2", "--supervised-epochs", "1", "--device", "cpu"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    for key in ("pretrained", "random_init", "supervised_from_scratch"):
        assert set(m[key]) == {"0.5", "1.0"}
        v = m[key]["1.0"]["macro_auroc"]
        assert v is None or 0.0 <= v <= 1.0
    assert (out / "label_efficiency.png").stat().st_size > 10_000
    # the supervised baseline at 100% is exactly `medalign finetune --from-scratch` on the train split
    ft = tmp_path / "scratch"
    res = subprocess.run(MEDALIGN + ["finetune", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(ft),
                                     "--from-scratch", "--epochs", "1", "--device", "cpu"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((ft / "metrics.json").read_text())["per_finding"] == m["supervised_from_scratch"]["1.0"]["per_finding"]
    half = json.loads((out / "supervised" / "0.5" / "metrics.json").read_text())
    assert half["n_train"] == len(half["train_rows"]) < json.loads((ft / "metrics.json").read_text())["n_train"]
    capsys.readouterr()
    assert cli(["probe", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(out), "--fractions", "0"]) == 2
    assert "--fractions" in capsys.readouterr().err


def test_finetune_reports_the_auroc_of_the_classifier_it_saves(trained_run, prepared_ct, phantom_ct, tmp_path):
    """The saved classifier, reloaded and run here, scores the test split to the AUROC it reported (sklearn)."""
    from safetensors.torch import load_file
    from sklearn.metrics import roc_auc_score

    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest
    from medalign.models.image import ImageEncoder
    from medalign.tasks.finetune import FindingClassifier
    from medalign.tasks.zeroshot import read_label_csv

    out = tmp_path / "ft"
    res = subprocess.run(MEDALIGN + ["finetune", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(out),
                                     "--labels", str(phantom_ct / "labels.csv"), "--epochs", "2", "--batch-size", "8"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    spec = json.loads((out / "classifier.json").read_text())
    model = FindingClassifier(ImageEncoder(spec["image"]["name"], 8, spec["image"]["options"]), len(spec["findings"]))
    state = load_file(str(out / "classifier.safetensors"))
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("encoder.proj.")}, strict=False)
    model.eval()
    test = read_manifest(prepared_ct).subset("test")
    truth = read_label_csv(phantom_ct / "labels.csv", test.columns["study_id"], spec["findings"])
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.stack([StudyDataset(test)[i]["image"] for i in range(len(test))]))).numpy()
    for k, name in enumerate(spec["findings"]):
        assert abs(roc_auc_score(truth[:, k] > 0.5, probs[:, k]) - m["per_finding"][name]) < 1e-6
    assert m["from_scratch"] is False and 0 <= m["epoch_chosen"] < 2
