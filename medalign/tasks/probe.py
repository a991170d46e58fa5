"""``medalign probe``: linear probes on frozen study embeddings, at several label fractions.

Per finding, a class-balanced logistic regression (scikit-learn) is fitted on a random fraction
of the train split's embeddings and scored by AUROC on the test split; fractions 1%, 10%, 100%
show label efficiency. The same probe on the same encoder with an untrained (randomly
initialised) image tower is the baseline, on the same splits and subsamples; with
``supervised_epochs`` the encoder is also trained from scratch end to end on each fraction's
first subsample (``medalign finetune --from-scratch``): the supervised baseline.

OUT/
    metrics.json              per fraction: macro and per-finding AUROC, pretrained, random init
                              (and supervised_from_scratch)
    label_efficiency.png      macro AUROC against label fraction
    supervised/<fraction>/    the from-scratch fine-tuning runs (their metrics.json, checkpoints)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from medalign.errors import InputError
from medalign.io.atomic import atomic_write, atomic_write_json
from medalign.metrics import known_rows
from medalign.models.image import ImageEncoder
from medalign.models.inference import embed_studies
from medalign.prep.manifest import read_manifest
from medalign.reports.vocabulary import load_vocabulary
from medalign.tasks.model_io import load_model


def probe_auroc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test AUROC of a class-balanced logistic regression ``(N, D) -> {0, 1}``; NaN when the test split
    or the training subsample lacks a class (a probe trained on one class learns nothing to score)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    if len(set(y_test.tolist())) < 2 or len(set(y_train.tolist())) < 2:
        return float("nan")
    clf = LogisticRegression(class_weight="balanced", max_iter=2000, C=1.0)
    clf.fit(x_train, y_train)
    return float(roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]))


def subsample(n: int, fraction: float, seed: int, minimum: int = 4) -> np.ndarray:
    """Row indices of a random ``fraction`` of ``n`` rows (at least ``minimum``), sorted."""
    k = min(n, max(minimum, math.ceil(fraction * n)))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def run_probes(emb_train: np.ndarray, y_train: np.ndarray, emb_test: np.ndarray, y_test: np.ndarray,
               names: list[str], fractions: list[float], seeds: int) -> dict:
    """``{fraction: {"macro_auroc", "per_finding": {name: mean AUROC over the scorable seeds}, "scorable":
    {name: "s of n"}}}``; y rows with NaN are left out per finding, and a subsample whose training rows
    hold one class only is skipped (not scored as 0.5) and counted out of ``scorable``."""
    out = {}
    for f in fractions:
        per, scorable = {}, {}
        for k, name in enumerate(names):
            te = known_rows(y_test[:, k])
            values = []
            for s in range(seeds):
                rows = subsample(len(emb_train), f, seed=s)
                tr = rows[known_rows(y_train[rows, k])]
                values.append(probe_auroc(emb_train[tr], y_train[tr, k] > 0.5, emb_test[te], y_test[te, k] > 0.5))
            kept = [v for v in values if not math.isnan(v)]
            per[name] = float(np.mean(kept)) if kept else None
            scorable[name] = f"{len(kept)} of {len(values)}"
        scored = [v for v in per.values() if v is not None]
        out[str(f)] = {"macro_auroc": float(np.mean(scored)) if scored else None, "per_finding": per, "scorable": scorable}
    return out


def probe_dataset(checkpoint: Path, dataset: Path, out: Path, labels: Path | None = None, fractions: list[float] | None = None,
                  seeds: int = 3, device: str = "auto", supervised_epochs: int = 0, id_key: bytes | None = None) -> dict:
    """Probe the pretrained encoder and a randomly initialised one (and, with ``supervised_epochs``,
    train the encoder from scratch on each fraction); write metrics.json and the plot."""
    from medalign.tasks.zeroshot import read_label_csv

    fractions = fractions or [0.01, 0.1, 1.0]
    if any(not 0 < f <= 1 for f in fractions):
        raise InputError(f"--fractions {fractions}: each must lie in (0, 1]")
    model, model_dir = load_model(checkpoint, device, dataset)
    manifest = read_manifest(dataset).studies()  # one embedding per study (its volumes averaged)
    train, test = manifest.subset("train"), manifest.subset("test")
    if len(train) < 4 or len(test) < 2:
        raise InputError(f"{dataset}: probing needs train and test splits (have {len(train)} and {len(test)} studies)")
    vocab_file = Path(model_dir) / "vocab.yaml"
    names = load_vocabulary(vocab_file).names if vocab_file.is_file() else manifest.findings

    def truth(m):
        return read_label_csv(labels, m.columns["study_id"], names, id_key) if labels else m.truth(names)

    y_train, y_test = truth(train), truth(test)
    result = {"fractions": fractions, "seeds": seeds, "ground_truth": str(labels) if labels else "labels parsed from reports"}
    result["pretrained"] = run_probes(embed_studies(model, train, progress="probe (train)"), y_train,
                                      embed_studies(model, test, progress="probe (test)"), y_test, names, fractions, seeds)
    torch.manual_seed(0)
    cfg = model.config.image
    model.image = ImageEncoder(cfg.name, model.config.embed_dim, cfg.options).to(model.logit_scale.device).eval()
    result["random_init"] = run_probes(embed_studies(model, train, progress="probe, random init (train)"), y_train,
                                       embed_studies(model, test, progress="probe, random init (test)"), y_test, names, fractions, seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if supervised_epochs:
        from medalign.config import load_config
        from medalign.tasks.finetune import finetune
        from medalign.train.config import FinetuneConfig

        supervised = load_config(FinetuneConfig, "default", "finetune", [f"epochs={supervised_epochs}", f"trainer.accelerator={device}"])

        result["supervised_from_scratch"] = {}
        for f in fractions:
            rows = subsample(len(train), f, seed=0)  # the probes' first subsample of this fraction
            try:
                r = finetune(checkpoint, dataset, out / "supervised" / str(f), supervised, labels, from_scratch=True, train_rows=rows,
                             id_key=id_key)
            except InputError as e:  # e.g. too few studies to hold both classes of any finding
                result["supervised_from_scratch"][str(f)] = {"macro_auroc": None, "per_finding": {}, "skipped": str(e)}
                continue
            result["supervised_from_scratch"][str(f)] = {"macro_auroc": r["macro_auroc"], "per_finding": r["per_finding"],
                                                         "epochs": supervised_epochs, "n_train": len(rows)}
    atomic_write_json(out / "metrics.json", result)
    _plot(result, out / "label_efficiency.png")
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    fr = result["fractions"]
    for key, label in (("pretrained", "probe, pretrained encoder"), ("random_init", "probe, random init (baseline)"),
                       ("supervised_from_scratch", "fine-tuned from scratch (baseline)")):
        if key not in result:
            continue
        ys = [result[key][str(f)]["macro_auroc"] for f in fr]
        ax.plot([100 * f for f in fr], [np.nan if y is None else y for y in ys], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("% of training labels")
    ax.set_ylabel("test macro AUROC")
    ax.set_ylim(0.4, 1.01)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
