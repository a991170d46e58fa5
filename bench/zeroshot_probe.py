"""Prompt zero-shot against a linear probe on the same frozen study embeddings (the baseline),
run side by side: where the probe separates a finding and the prompts do not, the prompts are
the problem, not the image features.

    .venv/bin/python bench/zeroshot_probe.py --checkpoint RUN --data DATASET [--labels CSV]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--labels", type=Path, default=None)
    a = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from medalign.prep.manifest import read_manifest
    from medalign.reports.vocabulary import load_vocabulary
    from medalign.models.inference import embed_studies
    from medalign.tasks.model_io import load_model
    from medalign.metrics import binary_labels
    from medalign.tasks.zeroshot import finding_probabilities
    from medalign.tasks.zeroshot_run import _ground_truth

    model, model_dir = load_model(a.checkpoint, "cpu")
    vocab = load_vocabulary(model_dir / "vocab.yaml")
    manifest = read_manifest(a.data)
    train, test = manifest.subset("train"), manifest.subset("test")
    e_train, e_test = embed_studies(model, train), embed_studies(model, test)
    y_train, y_test = _ground_truth(train, vocab, a.labels), _ground_truth(test, vocab, a.labels)
    zs = finding_probabilities(model, e_test, vocab)
    print(f"{'finding':<22} {'prompt AUROC':>12} {'probe AUROC':>12} {'ratio':>6}")
    ratios = []
    for k, name in enumerate(vocab.names):
        yt, st = binary_labels(y_test[:, k], zs[:, k])
        keep = np.isfinite(y_train[:, k]) & (y_train[:, k] >= 0)
        ytr = (y_train[keep, k] > 0.5).astype(int)
        if not (0 < yt.sum() < len(yt)) or not (0 < ytr.sum() < len(ytr)):
            continue
        probe = LogisticRegression(max_iter=2000).fit(e_train[keep], ytr)
        keep_t = np.isfinite(y_test[:, k]) & (y_test[:, k] >= 0)
        p_auc = roc_auc_score(yt, probe.decision_function(e_test[keep_t]))
        z_auc = roc_auc_score(yt, st)
        ratios.append(z_auc / p_auc)
        print(f"{name:<22} {z_auc:12.3f} {p_auc:12.3f} {z_auc / p_auc:6.2f}")
    print(f"mean ratio prompt/probe: {np.mean(ratios):.2f}")


if __name__ == "__main__":
    main()
