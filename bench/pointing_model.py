"""Build the small model the pointing-game test explains (``tests/data/pointing_model/``), and score it.

No model trained inside the 2-core test budget points reliably, and no small text tower trained
from scratch points at effusions as well as a fine-tuned MiniLM (both measured in
``docs/benchmarks.md``). So the test explains a model built here once and committed:

1. the teacher: the 8 mm demo model (``prep``/``pretrain --config demo_ct``, what ``make demo`` trained
   until it moved to ``demo_ct_5mm``: a half-width ResNet-10 with MiniLM fine-tuned, 200 steps of 24,
   on ``synth --studies 300 --seed 0``);
2. its text tower distilled into a 2-layer, 64-wide BERT with a WordPiece vocabulary fitted to the
   texts it must read (the vocabulary's prompts and the training reports): the student is trained to
   give the teacher's embeddings for those texts, and the teacher's positive-minus-negative prompt
   directions, which are what zero-shot scores and their maps are made of. MiniLM's 90 MB cannot be
   kept in a repository; the student's 0.2 MB (float16) can;
3. the export: the teacher's image tower and logit scale with the student's text tower, validation
   thresholds refitted with the student, weights stored in float16 (loaded into float32).

    .venv/bin/python bench/pointing_model.py --out tests/data/pointing_model [--work /tmp/pointing_model]

Then it plays the pointing game (``bench/explain.py --split all --methods occlusion``) on the
phantom the test uses (``synth --studies 48 --seed 7``, which the model never saw), every positive
study, and prints the rate per finding beside a random map's. ``--text-only DIR`` writes only a
from-scratch 2-layer, 64-wide BERT with MiniLM's tokenizer (the starting point of the from-scratch
recipes measured in docs/benchmarks.md).
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

ROOT = Path(__file__).resolve().parents[1]
MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]
TEACHER = ["--config", "demo_ct"]  # the demo recipe itself: a quarter-width image tower points at 9 of 14 effusions, not 12
STUDENT_WIDTH = 64
DISTIL_STEPS = 600


def minilm_folder() -> Path:
    from medalign.models.text import resolve_text_model

    return resolve_text_model("builtin:all-minilm-l6-v2")


def tiny_text_model(folder: Path) -> None:
    """A 2-layer, 64-wide BERT with MiniLM's tokenizer and seeded random weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def student_text_model(folder: Path, texts: list[str], width: int = STUDENT_WIDTH, vocab_size: int = 1000) -> None:
    """A 2-layer BERT, ``width`` wide, seeded random weights, with a WordPiece tokenizer (BERT's
    normalisation and pre-tokenisation) fitted to ``texts``; every word of them is in its vocabulary."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                             special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    wordpiece.decoder = decoders.WordPiece()
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * width, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def distil_text_tower(teacher, prompt_groups: tuple[list[list[str]], list[list[str]]], texts: list[str], folder: Path,
                      steps: int = DISTIL_STEPS):
    """Train a small text tower (written to ``folder``) so that its unit embeddings equal the
    teacher's on ``texts`` and on every prompt, and its ensemble directions ``pos_k - neg_k`` equal
    the teacher's. Returns the student ``TextEncoder``; prints how close it came."""
    import torch
    import torch.nn.functional as F

    from medalign.models.text import TextEncoder

    positives, negatives = prompt_groups
    prompts = sorted({p for group in positives + negatives for p in group})
    every = prompts + [t for t in texts if t not in set(prompts)]
    student_text_model(folder, every)
    student = TextEncoder(folder, teacher.config.embed_dim, pooling=teacher.config.text.pooling,
                          max_length=teacher.config.text.max_length)
    with torch.no_grad():
        target = teacher.encode_text(every)  # (T, D) unit vectors
    tokens = student.tokenize(every)  # tokenised once; each batch keeps its own longest length
    index = {p: i for i, p in enumerate(prompts)}
    pos_ix = [[index[p] for p in group] for group in positives]
    neg_ix = [[index[p] for p in group] for group in negatives]

    def directions(emb):  # (P, D) prompt embeddings -> (K, D), as zeroshot builds them
        ensemble = lambda groups: torch.stack([F.normalize(emb[g].mean(0), dim=0) for g in groups])  # noqa: E731
        return ensemble(pos_ix) - ensemble(neg_ix)

    goal = directions(target[: len(prompts)])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    student.train()
    for _ in range(steps):
        rows = torch.cat([torch.arange(len(prompts)), torch.randint(len(prompts), len(every), (64,))])
        mask = tokens["attention_mask"][rows]
        width = int(mask.sum(1).max())
        emb = F.normalize(student(input_ids=tokens["input_ids"][rows, :width], attention_mask=mask[:, :width]), dim=-1)
        got = directions(emb[: len(prompts)])
        loss = (1 - (emb * target[rows]).sum(-1)).mean() + (1 - F.cosine_similarity(got, goal, dim=-1)).mean() + 10 * F.mse_loss(got, goal)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    student.eval()
    with torch.no_grad():
        emb = F.normalize(student(**{k: v for k, v in tokens.items()}), dim=-1)
        cos_text = (emb * target).sum(-1)
        cos_dir = F.cosine_similarity(directions(emb[: len(prompts)]), goal, dim=-1)
    sizes = [sum(p.numel() for p in tower.model.parameters()) / 1e6 for tower in (teacher.text, student)]
    print(f"distilled text tower ({sizes[0]:.1f} M -> {sizes[1]:.2f} M parameters): {len(prompts)} prompts and "
          f"{len(every) - len(prompts)} report texts; cosine to the "
          f"teacher's embeddings min {float(cos_text.min()):.4f} mean {float(cos_text.mean()):.4f}; to its "
          f"positive-minus-negative directions min {float(cos_dir.min()):.5f}")
    return student


def build(work: Path, out: Path) -> None:
    """Teacher, distilled text tower, export (steps 1-3 of the module docstring)."""
    import torch

    from medalign.prep.manifest import read_manifest
    from medalign.models.dual import DualEncoder
    from medalign.reports.report_text import split_sentences
    from medalign.reports.vocabulary import load_vocabulary
    from medalign.train.export import export_model, write_validation_files

    run = lambda *args: subprocess.run(MEDALIGN + list(args), check=True, cwd=ROOT)  # noqa: E731
    run("synth", "--out", str(work / "raw"), "--studies", "300", "--seed", "0")
    run("prep", "--images", str(work / "raw" / "images"), "--reports", str(work / "raw" / "reports.csv"),
        "--out", str(work / "ds"), "--config", "demo_ct")
    run("pretrain", "--data", str(work / "ds"), "--out", str(work / "teacher"), *TEACHER)
    teacher = DualEncoder.from_pretrained(work / "teacher" / "model").eval()
    pairs = [f.prompt_pair() for f in load_vocabulary(work / "ds" / "vocab.yaml").findings]
    rows = [r for r in csv.DictReader(open(work / "raw" / "reports.csv", encoding="utf-8")) if r["split"] == "train"]
    texts = sorted({s for r in rows for s in split_sentences(r["report"])}) + [r["report"] for r in rows]
    torch.manual_seed(0)
    student = distil_text_tower(teacher, ([list(p.positives) for p in pairs], [list(p.negatives) for p in pairs]),
                                texts, work / "student_text")
    teacher.text = student
    shutil.rmtree(out, ignore_errors=True)
    export_model(teacher, work / "teacher" / "dataset_files", out)
    val = read_manifest(work / "ds").subset("val").studies()
    write_validation_files(teacher, val, work / "ds", out)


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
    ap.add_argument("--text-only", action="store_true", help="write only a from-scratch small text model to --out")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if a.text_only:
        tiny_text_model(a.out)
        return
    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    t0 = time.perf_counter()
    readme = a.out / "README.md"
    kept = readme.read_text(encoding="utf-8") if readme.is_file() else None  # the folder's README is not built here
    build(a.work, a.out)
    if kept is not None:
        readme.write_text(kept, encoding="utf-8")
    to_float16(a.out)
    print(f"model written to {a.out} ({sum(p.stat().st_size for p in a.out.rglob('*') if p.is_file()) / 2**20:.1f} MiB) "
          f"in {time.perf_counter() - t0:.0f} s")
    subprocess.run(MEDALIGN + ["synth", "--out", str(a.work / "held"), "--studies", "48", "--seed", "7"], check=True, cwd=ROOT)
    subprocess.run([sys.executable, str(ROOT / "bench" / "explain.py"), "--run", str(a.out), "--raw", str(a.work / "held"),
                    "--split", "all", "--findings", "pleural effusion", "cardiomegaly", "--methods", "occlusion", "--pointing-only"],
                   check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
