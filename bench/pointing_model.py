"""Build the small model the pointing-game test explains (``tests/data/pointing_model/``), and score it.

No model trained inside the 2-core test budget points reliably (measured in ``docs/benchmarks.md``:
models that fit the budget swing between 1/11 and 10/11 with the batch size or the seed), so the
test explains a model trained here once and committed: the demo's phantom (``synth --studies 300
--seed 0``), the demo preset, a quarter-width ResNet-10, and a 2-layer, 64-wide BERT built from a
config (MiniLM's tokenizer, random weights, trained with the images) instead of MiniLM, whose 90 MB
a repository cannot hold. Weights are stored in float16 (loaded into float32).

    .venv/bin/python bench/pointing_model.py --out tests/data/pointing_model [--work /tmp/pointing_model]

Then it plays the pointing game on the phantom the test uses (``synth --studies 48 --seed 7``,
which the model never saw), every positive study, with the documented ``zeroshot --study --explain``
path, and prints the rate per finding beside a random map's.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]
PRETRAIN = ["--config", "demo_ct", "--max-steps", "600", "data.batch_size=24", "model.image.options.widen_factor=0.25",
            "optim.warmup_steps=20", "optim.text_lr=0.001"]
FINDINGS = ("pleural effusion", "cardiomegaly")


def tiny_text_model(folder: Path) -> None:
    """A 2-layer, 64-wide BERT with MiniLM's tokenizer and seeded random weights."""
    import importlib

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from medalign.models.text import BUILTIN_TEXT_MODELS

    minilm = Path(importlib.import_module(BUILTIN_TEXT_MODELS["builtin:all-minilm-l6-v2"]).__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def to_float16(model_dir: Path) -> None:
    """Every float tensor of the export's weights stored as float16 (the text model's config keeps
    float32, so it loads back as float32 like the rest)."""
    from safetensors.torch import load_file, save_file

    for path in (model_dir / "model.safetensors", model_dir / "text" / "model.safetensors"):
        state = load_file(str(path))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(path))
    cfg_path = model_dir / "text" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2))


def pointing(model_dir: Path, raw: Path, work: Path, max_per_finding: int = 0) -> dict[str, tuple[int, int, float]]:
    """``{finding: (hits, positives, random-map rate)}`` over the positive studies of ``raw``: does the
    maximum of the map ``zeroshot --study --explain`` writes fall in the drawn lesion or within one voxel?"""
    import nibabel as nib
    from scipy.ndimage import binary_dilation

    from medalign.tasks.explain_run import explain_study, file_stem

    with open(raw / "labels.csv", encoding="utf-8") as f:
        labels = list(csv.DictReader(f))
    positives = {f: [r["study_id"] for r in labels if r[f] == "1"] for f in FINDINGS}
    if max_per_finding:
        positives = {f: ids[:max_per_finding] for f, ids in positives.items()}
    results = {}
    for sid in sorted(set().union(*positives.values())):
        results[sid] = explain_study(model_dir, raw / "images" / sid, work / sid, device="cpu")
    scores = {}
    for finding, ids in positives.items():
        hits, chance = 0, []
        for sid in ids:
            lesion = nib.load(raw / "lesions" / sid / f"{file_stem(finding)}.nii.gz").get_fdata() > 0.5
            near = binary_dilation(lesion, structure=np.ones((3, 3, 3), bool))  # within one voxel
            hits += bool(near[tuple(results[sid]["findings"][finding]["max_voxel"])])
            chance.append(float(near.mean()))
        scores[finding] = (hits, len(ids), float(np.mean(chance)))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pointing_model"))
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    t0 = time.perf_counter()
    tiny_text_model(a.work / "text")
    run = lambda *args: subprocess.run(MEDALIGN + list(args), check=True, cwd=ROOT)  # noqa: E731
    run("synth", "--out", str(a.work / "raw"), "--studies", "300", "--seed", "0")
    run("prep", "--images", str(a.work / "raw" / "images"), "--reports", str(a.work / "raw" / "reports.csv"),
        "--out", str(a.work / "ds"), "--config", "demo_ct")
    run("pretrain", "--data", str(a.work / "ds"), "--out", str(a.work / "run"), *PRETRAIN, f"model.text.model={a.work / 'text'}")
    shutil.rmtree(a.out, ignore_errors=True)
    shutil.copytree(a.work / "run" / "model", a.out)
    to_float16(a.out)
    print(f"model written to {a.out} ({sum(p.stat().st_size for p in a.out.rglob('*') if p.is_file()) / 2**20:.1f} MiB) "
          f"in {time.perf_counter() - t0:.0f} s")
    run("synth", "--out", str(a.work / "held"), "--studies", "48", "--seed", "7")
    t = time.perf_counter()
    scores = pointing(a.out, a.work / "held", a.work / "maps")
    print(f"pointing game on synth --studies 48 --seed 7 (never seen), every positive study, {time.perf_counter() - t:.0f} s:")
    for finding, (hits, n, chance) in scores.items():
        print(f"  {finding:<17} {hits}/{n} ({hits / n:.2f})   random map {chance:.2f}")


if __name__ == "__main__":
    main()
