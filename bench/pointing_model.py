"""Build the small model the pointing-game test explains (``tests/data/pointing_model/``), and score it.

No model trained inside the 2-core test budget points reliably (measured in ``docs/benchmarks.md``:
models that fit the budget swing between 1/11 and 10/11 with the batch size or the seed), so the
test explains a model trained here once and committed: the demo's phantom (``synth --studies 300
--seed 0``), the demo preset, a quarter-width ResNet-10, and a 2-layer, 64-wide BERT built from a
config (MiniLM's tokenizer, random weights, trained with the images) instead of MiniLM, whose 90 MB
a repository cannot hold. Weights are stored in float16 (loaded into float32).

    .venv/bin/python bench/pointing_model.py --out tests/data/pointing_model [--work /tmp/pointing_model]

Then it plays the pointing game (``bench/explain.py --split all --methods occlusion``) on the
phantom the test uses (``synth --studies 48 --seed 7``, which the model never saw), every positive
study, and prints the rate per finding beside a random map's. ``--text-only DIR`` writes only the
small text model (the starting point of the recipes measured in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]
PRETRAIN = ["--config", "demo_ct", "--max-steps", "600", "data.batch_size=24", "model.image.options.widen_factor=0.25",
            "optim.warmup_steps=20", "optim.text_lr=0.001"]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pointing_model"))
    ap.add_argument("--text-only", action="store_true", help="write only the small text model to --out")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if a.text_only:
        tiny_text_model(a.out)
        return
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
    subprocess.run([sys.executable, str(ROOT / "bench" / "explain.py"), "--run", str(a.out), "--raw", str(a.work / "held"),
                    "--split", "all", "--findings", "pleural effusion", "cardiomegaly", "--methods", "occlusion", "--pointing-only"],
                   check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
