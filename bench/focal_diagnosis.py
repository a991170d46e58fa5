"""Why is the lung nodule not learned? (issue 29, part 1: the diagnosis, before any change.)

On held-out phantom studies (``synth --seed 11``, which the model never saw), prepared with the
model's own preset, this measures where the nodule is lost, each beside the same measure for a large
finding (pleural effusion) as the reference:

1. **Seen by the encoder?** A linear probe (scikit-learn logistic regression, 5-fold stratified CV,
   AUROC) on frozen features of every backbone stage, pooled by average and by maximum over space,
   and on the final embedding. A nodule the probe finds in ``layer1`` but not in the embedding is lost
   on the way; one no layer holds was never seen.
2. **Lost in the pooling?** The same probe on the last map average- vs max-pooled, and the fraction of
   the last map's cells a nodule covers.
3. **Drowned in the batch's soft targets?** How often two studies of a batch have label vectors that
   differ in the nodule only (their reports then differ by one sentence), from the phantom's labels.
4. **The text side?** The cosine between the positive and negative prompt embeddings of each finding
   (1.0: the text tower cannot tell them apart), and the zero-shot AUROC from those prompts.
5. **The budget?** The nodule's size against the preset's voxel size.

    .venv/bin/python bench/focal_diagnosis.py [--checkpoint tests/data/pointing_model] [--studies 160]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FOCAL, LARGE = "lung nodule", "pleural effusion"


def cli(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "medalign.cli.main", *argv], check=True, capture_output=True)


def probe_auroc(x: np.ndarray, y: np.ndarray) -> float:
    """5-fold stratified CV AUROC of a standardised logistic regression on ``x`` ``(N, F)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.metrics import roc_auc_score

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    scores = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def stage_features(model, volumes: list[np.ndarray], encoder=None) -> dict[str, np.ndarray]:
    """Per backbone stage, average- and max-pooled features ``(N, C)``; plus the final embedding
    (``encoder``: another image encoder of the same kind, e.g. untrained, in place of the model's)."""
    import torch

    from medalign.models.image import IMAGE_ENCODERS

    encoder = encoder or model.image
    stages = IMAGE_ENCODERS[encoder.name].stages(encoder.backbone)
    names = [f"stage{i + 1}" for i in range(len(stages))]
    grabbed: dict[str, torch.Tensor] = {}
    hooks = [s.register_forward_hook(lambda m, i, o, n=n: grabbed.__setitem__(n, o.detach())) for n, s in zip(names, stages)]
    out: dict[str, list] = {}
    shapes = {}
    with torch.no_grad():
        for v in volumes:
            x = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None, None]
            emb = model.encode_image(x) if encoder is model.image else encoder(x)
            out.setdefault("embedding", []).append(emb[0].numpy())
            for n in names:
                fmap = grabbed[n][0]
                shapes[n] = tuple(fmap.shape[1:])
                out.setdefault(f"{n} avg", []).append(fmap.mean(dim=(1, 2, 3)).numpy())
                out.setdefault(f"{n} max", []).append(fmap.amax(dim=(1, 2, 3)).numpy())
    for h in hooks:
        h.remove()
    return {k: np.stack(v) for k, v in out.items()}, shapes


def only_differs_by(labels: np.ndarray, k: int) -> float:
    """Of all pairs of studies, the fraction whose label vectors differ in finding ``k`` and nothing else."""
    pairs = list(itertools.combinations(range(len(labels)), 2))
    hits = sum(1 for a, b in pairs if labels[a, k] != labels[b, k] and np.array_equal(np.delete(labels[a], k), np.delete(labels[b], k)))
    return hits / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "tests" / "data" / "pointing_model")
    ap.add_argument("--studies", type=int, default=160)
    args = ap.parse_args()

    from medalign.config import read_yaml
    from medalign.data.dataset import as_unit_array
    from medalign.models.inference import finding_probabilities, prompt_embeddings
    from medalign.prep.manifest import read_manifest
    from medalign.reports.vocabulary import load_vocabulary
    from medalign.tasks.model_io import load_model
    from sklearn.metrics import roc_auc_score

    work = Path(tempfile.mkdtemp(prefix="medalign_bench_focal_"))
    try:
        model, model_dir = load_model(args.checkpoint, "cpu")
        preset = model_dir / "prep_config.yaml"
        cli("synth", "--out", str(work / "raw"), "--studies", str(args.studies), "--seed", "11")
        cli("prep", "--images", str(work / "raw" / "images"), "--reports", str(work / "raw" / "reports.csv"), "--out", str(work / "ds"),
            "--config", str(preset))
        manifest = read_manifest(work / "ds").studies()
        with open(work / "raw" / "labels.csv", encoding="utf-8") as f:
            truth = {r["study_id"]: r for r in csv.DictReader(f)}
        ids = manifest.columns["study_id"]
        findings = [c for c in next(iter(truth.values())) if c != "study_id"]
        labels = np.array([[int(truth[s][c]) for c in findings] for s in ids])
        volumes = [as_unit_array(np.load(work / "ds" / v)) for v in manifest.columns["volume"]]
        feats, shapes = stage_features(model, volumes)
        focal, large = labels[:, findings.index(FOCAL)], labels[:, findings.index(LARGE)]

        print(f"held-out phantom: {len(ids)} studies (synth --seed 11), {int(focal.sum())} with a {FOCAL}, {int(large.sum())} with "
              f"{LARGE}; model {args.checkpoint}")
        import torch

        from medalign.models.image import create_image_encoder

        torch.manual_seed(0)
        untrained = create_image_encoder(model.image.name, model.image.proj.out_features, **dict(model.config.image.options)).eval()
        random_feats, _ = stage_features(model, volumes, untrained)
        print("\n1-2. linear probe on frozen features (5-fold CV AUROC); the same architecture untrained beside it")
        print(f"| features | map shape | {FOCAL}, trained | {FOCAL}, untrained | {LARGE}, trained | {LARGE}, untrained |")
        print("|---|---|---|---|---|---|")
        import torch.nn.functional as F

        for size in (4, 2):  # the input itself, block-averaged: is the nodule linearly there before any network?
            raw = F.avg_pool3d(torch.from_numpy(np.stack(volumes)[:, None].astype(np.float32)), size).flatten(1).numpy()
            shape = "x".join(str(n // size) for n in volumes[0].shape)
            print(f"| input voxels, {size}x{size}x{size} block mean | {shape} | {probe_auroc(raw, focal):.3f} | - | {probe_auroc(raw, large):.3f} | - |")
        for name, x in feats.items():
            stage = name.split()[0]
            print(f"| {name} | {'x'.join(map(str, shapes.get(stage, ()))) or '-'} | {probe_auroc(x, focal):.3f} | "
                  f"{probe_auroc(random_feats[name], focal):.3f} | {probe_auroc(x, large):.3f} | {probe_auroc(random_feats[name], large):.3f} |")

        vocab = load_vocabulary(model_dir / "vocab.yaml") if (model_dir / "vocab.yaml").is_file() else load_vocabulary("chest_ct")
        names = vocab.names
        emb = feats["embedding"]
        probs = finding_probabilities(model, emb / np.linalg.norm(emb, axis=1, keepdims=True), vocab)
        pairs = [f.prompt_pair() for f in vocab.findings]
        pos = prompt_embeddings(model, [p.positives for p in pairs]).numpy()
        neg = prompt_embeddings(model, [p.negatives for p in pairs]).numpy()
        print("\n4. text side: zero-shot AUROC from the prompts, and how far apart the two prompts are")
        print("| finding | zero-shot AUROC | cos(positive, negative prompt) | probe on the embedding |")
        print("|---|---|---|---|")
        for k, name in enumerate(names):
            if name not in findings:
                continue
            y = labels[:, findings.index(name)]
            cos = float(pos[k] @ neg[k] / np.linalg.norm(pos[k]) / np.linalg.norm(neg[k]))
            print(f"| {name} | {roc_auc_score(y, probs[:, k]):.3f} | {cos:.3f} | {probe_auroc(emb, y):.3f} |")

        print("\n3. batch composition: of all pairs of studies, those whose labels differ in one finding only")
        for k, name in enumerate(findings):
            print(f"  {name}: {100 * only_differs_by(labels, k):.1f}% of pairs")

        prep = read_yaml(preset)
        spacing = next((s["spacing"]["pixdim"] for s in prep.get("steps", []) if "spacing" in s), None)
        last = shapes[[n for n in shapes][-1]]
        print(f"\n5. budget: the phantom's nodules are 20-32 mm across; the preset's voxel is {spacing} mm, so 2.5-4 voxels; the last "
              f"map is {'x'.join(map(str, last))} cells over the volume, so a nodule covers under one cell")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
