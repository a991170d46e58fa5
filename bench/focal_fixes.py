"""Which change teaches the lung nodule? (issue 29, part 2: candidate fixes at the demo's budget.)

Each variant is the demo's recipe (``configs/pretrain/demo_ct.yaml``, 200 steps on 2 cores) with
config overrides, trained with several seeds on the demo's phantom (``synth --seed 0``, 300
studies). Every model is scored zero-shot

- on the demo's test split (what ``make demo`` reports), and
- on 160 held-out phantom studies from a seed nobody tuned on (``synth --seed 11``), with the
  vocabulary's prompts and with **paraphrased prompts** no training ever saw (a finding term trained
  on the vocabulary's prompts could fit those sentences rather than the finding; the paraphrases
  show whether it learned the finding);

and, text aside, a linear probe on the held-out studies' image embeddings (5-fold CV AUROC): does
the image tower hold the finding at all?

The reference is the baseline variant (the recipe as it was) run side by side with the same seeds.
Runs are kept under ``--work`` and skipped when their results exist (a rerun resumes).

    .venv/bin/python bench/focal_fixes.py --variants baseline prompts head --seeds 0 1 2 [--prep demo_ct]
    .venv/bin/python bench/focal_fixes.py --image-only 300 --seeds 0 [--prep demo_ct] [--image-options '{"no_max_pool": true}']

``--image-only``: the image tower alone trained on the phantom's true labels, the upper bound of
what a finding term could teach at that resolution and budget.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.focal_diagnosis import probe_auroc  # noqa: E402

#: name -> pretrain config overrides (key=value), on top of demo_ct
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "prompts": ["loss.findings.weight=1.0", "loss.findings.via=prompts"],
    "head": ["loss.findings.weight=1.0", "loss.findings.via=head"],
    "prompts_w3": ["loss.findings.weight=3.0", "loss.findings.via=prompts"],
    "head_w3": ["loss.findings.weight=3.0", "loss.findings.via=head"],
    "prompts_w10": ["loss.findings.weight=10.0", "loss.findings.via=prompts"],
    "prompts_lr3": ["loss.findings.weight=1.0", "loss.findings.via=prompts", "optim.lr=0.003"],
    "baseline_lr3": ["optim.lr=0.003"],
    # image-only trains at a constant rate; the recipe's cosine decay spends the last half at low rates
    "constant_lr": ["optim.min_lr_ratio=1.0"],
    "prompts_constant_lr": ["loss.findings.weight=1.0", "loss.findings.via=prompts", "optim.min_lr_ratio=1.0"],
    # the text tower's share of each step: only its top two layers train
    "text_top2": ["model.text.trainable_layers=2"],
    # the head teaches the image tower the finding; identity-heavier targets then tell apart reports that
    # differ by one finding (label-similarity targets pull a nodule study towards its nodule-free twin)
    "head_mix25": ["loss.findings.weight=1.0", "loss.findings.via=head", "loss.mix=0.25"],
    "head_info_nce": ["loss.findings.weight=1.0", "loss.findings.via=head", "loss.name=info_nce"],
    # the head teaches the image tower the finding, the prompt term ties the text tower's prompts to it
    "both": ["loss.findings.weight=1.0", "loss.findings.via=both"],
    "both_w3": ["loss.findings.weight=3.0", "loss.findings.via=both"],
    # the scaled head at a heavier weight: the demo's recipe (configs/pretrain/demo_ct_5mm.yaml)
    "head_w5": ["loss.findings.weight=5.0", "loss.findings.via=head"],
}

#: sentences no vocabulary or phantom report uses: (positive, negative) per phantom finding
PARAPHRASES = {
    "pleural effusion": ("Fluid collects in the pleural space.", "The pleural spaces are clear."),
    "cardiomegaly": ("The cardiac silhouette is enlarged.", "The cardiac silhouette is of normal size."),
    "lung nodule": ("A rounded solid lesion is seen within the lung.", "The lungs contain no focal lesion."),
    "emphysema": ("The lungs show destructive low-attenuation areas.", "The lung parenchyma has normal attenuation."),
    "consolidation": ("Airspace opacification of the lung parenchyma.", "The lung parenchyma is aerated normally."),
}


def cli(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", "medalign.cli.main", *argv], check=True, capture_output=True)


def phantom(work: Path, seed: int, studies: int, prep: str) -> tuple[Path, Path]:
    """``(raw, dataset)`` for ``synth --seed`` prepared with the preset ``prep`` (each made once)."""
    raw, data = work / f"raw_seed{seed}_{studies}", work / f"data_{Path(prep).stem}_seed{seed}_{studies}"
    if not (raw / "labels.csv").exists():
        cli("synth", "--out", str(raw), "--modality", "ct", "--studies", str(studies), "--seed", str(seed))
    if not (data / "manifest.parquet").exists():
        cli("prep", "--images", str(raw / "images"), "--reports", str(raw / "reports.csv"), "--out", str(data), "--config", prep)
    return raw, data


def truth_of(raw: Path, ids: list[str], findings: list[str]) -> np.ndarray:
    with open(raw / "labels.csv", encoding="utf-8") as f:
        rows = {r["study_id"]: r for r in csv.DictReader(f)}
    return np.array([[int(rows[s][c]) for c in findings] for s in ids])


def scores(model, data: Path, split: str, prompts: dict[str, tuple[list[str], list[str]]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Study ids of ``split``, ``(N, K)`` zero-shot probabilities from ``prompts`` (finding -> pair) and
    the ``(N, D)`` study embeddings."""
    import torch

    from medalign.models.inference import embed_studies, prompt_embeddings
    from medalign.prep.manifest import read_manifest

    manifest = read_manifest(data).studies()
    if split != "all":
        manifest = manifest.subset(split)
    emb = torch.as_tensor(embed_studies(model, manifest))
    pos = prompt_embeddings(model, [p for p, _ in prompts.values()])
    neg = prompt_embeddings(model, [n for _, n in prompts.values()])
    with torch.no_grad():
        s = model.scale()
        probs = torch.softmax(torch.stack([s * emb @ pos.T, s * emb @ neg.T], dim=-1), dim=-1)[..., 0]
    return list(manifest.columns["study_id"]), probs.numpy(), emb.numpy()


def evaluate(run: Path, demo: tuple[Path, Path], held: tuple[Path, Path]) -> dict:
    from sklearn.metrics import roc_auc_score

    from medalign.reports.vocabulary import load_vocabulary
    from medalign.tasks.model_io import load_model

    model, _ = load_model(run, "cpu")
    vocab = {f.name: f.prompt_pair() for f in load_vocabulary(demo[1] / "vocab.yaml").findings}
    findings = list(PARAPHRASES)
    sets = {
        "demo test": (demo, "test", {f: (vocab[f].positives, vocab[f].negatives) for f in findings}),
        "held-out": (held, "all", {f: (vocab[f].positives, vocab[f].negatives) for f in findings}),
        "held-out, paraphrased": (held, "all", {f: ([p], [n]) for f, (p, n) in PARAPHRASES.items()}),
    }
    out = {}
    for name, ((raw, data), split, prompts) in sets.items():
        ids, probs, emb = scores(model, data, split, prompts)
        y = truth_of(raw, ids, findings)
        out[name] = {f: float(roc_auc_score(y[:, k], probs[:, k])) for k, f in enumerate(findings)}
    # does the image embedding hold the finding at all, text aside? (a linear probe, 5-fold CV on the held-out studies)
    out["held-out probe"] = {f: probe_auroc(emb, y[:, k]) for k, f in enumerate(findings)}
    return out


def image_only(demo: tuple[Path, Path], held: tuple[Path, Path], steps: int, seed: int, options: dict | None = None) -> dict:
    """The image tower alone, trained on the phantom's true labels (binary cross-entropy, a linear
    head on its unit embedding, the demo's batch and learning rate): what the encoder can learn at
    this resolution and budget when told the answer; held-out AUROC per finding every 100 steps."""
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from medalign.config import load_config
    from medalign.models.image import ImageEncoder
    from medalign.prep.manifest import read_manifest
    from medalign.train.config import PretrainConfig

    findings = list(PARAPHRASES)

    def arrays(raw: Path, data: Path, split: str):
        manifest = read_manifest(data).studies()
        manifest = manifest if split == "all" else manifest.subset(split)
        x = torch.from_numpy(np.stack([np.load(data / v) for v in manifest.columns["volume"]]))[:, None]
        return x, torch.from_numpy(truth_of(raw, list(manifest.columns["study_id"]), findings).astype(np.float32))

    cfg = load_config(PretrainConfig, "demo_ct", "pretrain")
    (x_train, y_train), (x_held, y_held) = arrays(*demo, "train"), arrays(*held, "all")
    torch.manual_seed(seed)
    encoder = ImageEncoder(cfg.model.image.name, cfg.model.embed_dim, {**cfg.model.image.options, **(options or {})})
    head = torch.nn.Linear(cfg.model.embed_dim, len(findings))
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x_train), (cfg.data.batch_size,), generator=g)
        loss = F.binary_cross_entropy_with_logits(head(10 * F.normalize(encoder(x_train[idx].float() / 255), dim=-1)), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            encoder.eval()
            with torch.no_grad():
                p = torch.cat([head(F.normalize(encoder(x_held[i:i + 32].float() / 255), dim=-1)) for i in range(0, len(x_held), 32)])
            encoder.train()
            out[step] = {f: float(roc_auc_score(y_held[:, k], p[:, k])) for k, f in enumerate(findings)}
            print(f"image only, {step} steps: " + "  ".join(f"{f} {v:.3f}" for f, v in out[step].items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["baseline", "prompts", "head"], choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/medalign_bench_focal_fixes"))
    ap.add_argument("--data-seed", type=int, default=0, help="the training phantom's synth seed (the demo's: 0)")
    ap.add_argument("--prep", default="demo_ct", help="the prep preset (name or YAML) both phantoms are prepared with")
    ap.add_argument("--image-only", type=int, metavar="STEPS", help="instead: the image tower alone on the true labels for STEPS steps")
    ap.add_argument("--image-options", type=json.loads, default={}, help='with --image-only: encoder options over the demo\'s, e.g. \'{"no_max_pool": true}\'')
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    demo = phantom(args.work, args.data_seed, 300, args.prep)
    held = phantom(args.work, 11, 160, args.prep)
    if args.image_only:
        for seed in args.seeds:
            image_only(demo, held, args.image_only, seed, args.image_options)
        return
    results = {}
    for variant in args.variants:
        for seed in args.seeds:
            run = args.work / f"run_{variant}_{Path(args.prep).stem}_data{args.data_seed}_seed{seed}"
            result = run / "focal_fixes.json"
            if not result.exists() or "held-out probe" not in json.loads(result.read_text()):  # older results: rescored
                t0 = time.time()
                if not (run / "model" / "config.json").exists():
                    cli("pretrain", "--data", str(demo[1]), "--out", str(run), "--config", "demo_ct", "--overwrite",
                        f"trainer.seed={seed}", *VARIANTS[variant])
                minutes = (time.time() - t0) / 60 if not result.exists() else json.loads(result.read_text())["minutes"]
                result.write_text(json.dumps({"minutes": minutes, **evaluate(run, demo, held)}, indent=2))
            results[(variant, seed)] = json.loads(result.read_text())
            r = results[(variant, seed)]
            print(f"{variant:<14} seed {seed}  {r['minutes']:.1f} min  " + "  ".join(
                f"{name}: nodule {v['lung nodule']:.3f} macro {np.mean(list(v.values())):.3f}" for name, v in r.items() if name != "minutes"),
                flush=True)
    print("\n| variant | set | lung nodule, mean ± sd | macro (5 findings), mean ± sd | nodule per seed |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        runs = [results[(variant, s)] for s in args.seeds]
        for name in ("demo test", "held-out", "held-out, paraphrased", "held-out probe"):
            nod = np.array([r[name]["lung nodule"] for r in runs])
            mac = np.array([np.mean(list(r[name].values())) for r in runs])
            print(f"| {variant} | {name} | {nod.mean():.3f} ± {nod.std(ddof=1) if len(nod) > 1 else 0:.3f} | "
                  f"{mac.mean():.3f} ± {mac.std(ddof=1) if len(mac) > 1 else 0:.3f} | {' '.join(f'{x:.2f}' for x in nod)} |")


if __name__ == "__main__":
    main()
