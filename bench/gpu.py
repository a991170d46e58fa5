"""Every GPU figure medalign quotes, measured in one run: training steps, the loader, inference.

One script for the few minutes a GPU machine is lent (``bench/gpu_prepare.sh`` prints the exact
device command). Sections, in order, each within what is left of ``--budget-s``:

0. ceilings: a large bf16 matrix product (TFLOP/s) and a device-to-device copy (TB/s), measured;
1. training steps of the ``chest_ct`` preset (resnet18_3d at 240 x 240 x 120, BERT-base text tower
   built from its config, bf16-mixed), per-GPU batch 16/32/64, channels-last off/on, then
   ``torch.compile`` on the faster layout: volumes/s, step time, counted FLOPs (forward + backward,
   ``torch.utils.flop_counter``), MFU against the device's bf16 dense peak and against the measured
   matrix product, peak memory. The step is medalign's (uint8 volume -> unit float -> intensity
   jitter on the device -> towers -> loss), in a plain loop (the baseline), and once under
   medalign's Lightning module for the framework's overhead;
2. the same for the ``oct`` preset (128 x 128 x 64) and the largest registered encoder (vit_3d at
   240 x 240 x 120, 3,375 tokens), that one with MONAI's einsum attention and with fused attention;
3. the real loader (``StudyDataset`` with the preset's augmentation, ``data.intensity_on: device``)
   on a synthetic chest-CT set prepared here by ``medalign prep --config chest_ct``: volumes/s
   against the training step's demand (goal >= 2x);
4. ``medalign pretrain`` end to end on that set (loader + step + logging): volumes/s as the run logs it;
5. inference (what ``zeroshot``/``index`` run): ``embed_studies`` as it is, and batched through a
   loader with bf16 autocast: studies/s;
6. FSDP steps when more than one device is visible (otherwise said).

Writes ``gpu.json`` (after every measurement, so a run cut short keeps what it measured) and
``gpu.md`` (the tables for docs/benchmarks.md) under ``--out``. ``--smoke`` runs every section at
toy sizes on the CPU in well under a minute (a test keeps it working).

    .venv/bin/python bench/gpu.py --smoke --out /tmp/gpu_smoke
    python3 bench/gpu.py --out $OUT --budget-s 330        # on the device (see bench/gpu_prepare.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: dense bf16 tensor-core peaks by the vendors' datasheets (TFLOP/s), for MFU
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
WORDS = ("no pleural effusion cardiomegaly emphysema nodule consolidation atelectasis mild moderate right left lower upper lobe "
         "segment bronchiectasis lymph node mediastinal hilar opacity ground glass pericardial thickening calcification").split()


@dataclass
class Case:
    """One training-step measurement: a preset's towers at one size, batch and layout."""

    section: str
    preset: str
    encoder: str
    size: tuple[int, int, int]
    batch: int
    options: dict = field(default_factory=dict)
    channels_last: bool = False
    compile: bool = False
    label: str = ""


class Recorder:
    """Results kept in ``gpu.json`` (rewritten atomically after each one) and printed as they come."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.data: dict = {"device": {}, "ceilings": {}, "train": [], "lightning": [], "loader": {}, "pretrain": {}, "inference": [],
                           "fsdp": {}, "profile": {}, "skipped": []}
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def room_for(self, seconds: float, what: str) -> bool:
        """Whether ``seconds`` more fit the budget; if not, the skip is recorded with its reason."""
        if self.left() >= seconds:
            return True
        self.data["skipped"].append(f"{what}: {self.left():.0f} s of the budget left, about {seconds:.0f} s needed")
        print(f"skipped {what} (budget)", flush=True)
        self.save()
        return False

    def save(self) -> None:
        tmp = self.out / "gpu.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.out / "gpu.json")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ceilings(device: str, smoke: bool) -> dict:
    """Measured bf16 matrix-product rate (TFLOP/s) and device-to-device copy bandwidth (TB/s)."""
    n = 256 if smoke else 8192
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    reps = 2 if smoke else 20
    for _ in range(reps):
        a @ b
    sync(device)
    tflops = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
    x = torch.empty((2**20 if smoke else 2**30) // 4, device=device)
    x.normal_()
    y = torch.empty_like(x)
    y.copy_(x)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(device)
    tbs = 2 * x.numel() * 4 * reps / (time.perf_counter() - t) / 1e12
    del a, b, x, y
    return {"matmul_bf16_tflops" if device == "cuda" else "matmul_fp32_tflops": round(tflops, 1), "copy_tb_per_s": round(tbs, 2),
            "matmul_size": n}


def text_folder(tmp: Path, tokenizer: Path | None, smoke: bool) -> Path:
    """A BERT text tower from its config (random weights: throughput does not depend on them):
    BERT-base (BiomedBERT's shape) on the device, a 2-layer one for ``--smoke``; the tokenizer from
    ``tokenizer`` or the built-in MiniLM's (the same WordPiece vocabulary)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp / ("bert-tiny" if smoke else "bert-base")
    if (folder / "config.json").is_file():
        return folder
    if tokenizer is None:
        from medalign.models.text import resolve_text_model

        tokenizer = Path(resolve_text_model("builtin:all-minilm-l6-v2"))
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if smoke else BertConfig()
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tokenizer)).save_pretrained(folder)
    return folder


def pretrain_config(preset: str, encoder: str, options: dict, text: Path, smoke: bool):
    from medalign.config import load_config
    from medalign.train.config import PretrainConfig

    config = load_config(PretrainConfig, preset, "pretrain")
    config.model.image.name = encoder
    config.model.image.options = {**({"pooling": "avgmax"} if encoder.startswith("resnet") else {}), **options}  # the presets' pooling
    config.model.text.model = str(text)
    if smoke:
        config.model.text.max_length = 32
    return config


def make_batches(model, n: int, batch: int, size, k: int, device: str, words: int, channels_last: bool) -> list[dict]:
    """``n`` batches as the loader hands them over with ``data.intensity_on: device``: uint8 volumes,
    per-study intensity jitter, labels, tokens of report-length texts (``words`` words each)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        texts = [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (words,), generator=g)) for _ in range(batch)]
        image = torch.randint(0, 256, (batch, 1, *size), dtype=torch.uint8, device=device)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last_3d)
        out.append({
            "image": image,
            "intensity_jitter": ((torch.rand(batch, 2, generator=g) - 0.5) * 0.1).to(device),
            "tokens": {kk: v.to(device) for kk, v in model.text.tokenize(texts).items()},
            "labels": (torch.rand(batch, k, generator=g) > 0.6).float().to(device),
            "index": torch.arange(batch, device=device),
        })
    return out


def autocast(device: str):
    """bf16 autocast on CUDA (what ``precision: bf16-mixed`` runs), nothing on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def training_setup(case: "Case", text: Path, device: str, smoke: bool):
    """``(config, module, optimizer, batches)`` for ``case``: medalign's ``PretrainModule`` (its
    ``training_step`` is the step timed: uint8 batch -> unit float and jitter -> towers -> loss) and
    its own AdamW groups, on ``device``."""
    from medalign.models import DualEncoder
    from medalign.train.module import PretrainModule

    config = pretrain_config(case.preset, case.encoder, case.options, text, smoke)
    torch.manual_seed(0)
    model = DualEncoder(config.model).to(device)
    if case.channels_last:
        model.image.to(memory_format=torch.channels_last_3d)
    module = PretrainModule(model, config)
    optimizer = module.configure_optimizers()["optimizer"]
    batches = make_batches(model, 2, case.batch, case.size, 18, device, 12 if smoke else 180, case.channels_last)
    return config, module, optimizer, batches


def step_flops(module, batch: dict, device: str) -> float:
    """FLOPs of one forward + backward, counted by ``torch.utils.flop_counter`` (not estimated);
    under the run's autocast, so that counting takes no more memory than the step."""
    from torch.utils.flop_counter import FlopCounterMode

    from medalign.models.image import PhaseStemConv3d

    model = module.model
    stems = [m for m in model.modules() if isinstance(m, PhaseStemConv3d)]
    for m in stems:  # the model's FLOPs: the stem as the direct convolution (its phase form does 1.5x the multiply-adds)
        m.phases = False
    with FlopCounterMode(display=False) as counter:
        with autocast(device):
            loss = module.training_step(batch, 0)
        loss.backward()
    for m in stems:
        m.phases = True
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def plain_steps(module, optimizer, batches, device: str, warmup: int, steps: int) -> tuple[float, float]:
    """``(seconds of the first step, mean seconds per step after warm-up)`` of the plain loop:
    bf16 autocast (fp32 on CPU), backward, clip 1.0, AdamW, clamp of the logit scale."""
    model = module.model
    first = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        t = time.perf_counter()
        with autocast(device):
            loss = module.training_step(batches[i % len(batches)], i)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.clamp_logit_scale()
        if i == 0:
            sync(device)
            first = time.perf_counter() - t
    sync(device)
    if not math.isfinite(float(loss.detach())):
        raise FloatingPointError(f"loss {float(loss.detach())}")
    return first, (time.perf_counter() - t0) / steps


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_case(case: Case, text: Path, device: str, rec: Recorder, smoke: bool, peak_tflops: float | None) -> dict | None:
    """Build the preset's dual encoder, time ``case`` and record its figures (``OOM`` when it does not fit)."""
    config = pretrain_config(case.preset, case.encoder, case.options, text, smoke)
    row = {"section": case.section, "preset": case.preset, "encoder": case.encoder, "size": list(case.size), "batch": case.batch,
           "channels_last": case.channels_last, "compile": case.compile, "label": case.label, "precision": "bf16-mixed" if device == "cuda" else "32-true",
           "text_max_length": config.model.text.max_length}
    free(device)
    module = optimizer = batches = None
    try:
        _, module, optimizer, batches = training_setup(case, text, device, smoke)
        row["text_tokens"] = int(batches[0]["tokens"]["attention_mask"].sum(1).float().mean())
        if case.compile:
            # as `trainer.compile: true` does (in place); the smoke run traces without generating code
            module.model.image.compile(**({"backend": "eager"} if smoke else {}))
        else:
            row["flops_per_step"] = step_flops(module, batches[0], device)
        free(device)
        warmup, steps = (1, 2) if smoke else (3, 8 if case.batch >= 32 else 12)
        first, sec = plain_steps(module, optimizer, batches, device, warmup, steps)
        row.update(first_step_s=round(first, 2), step_s=round(sec, 4), volumes_per_s=round(case.batch / sec, 1))
        if device == "cuda":
            row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    except torch.OutOfMemoryError:
        row["error"] = "OOM"
    except Exception as e:  # a failing configuration is a figure too; the rest still runs
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    finally:
        del module, optimizer, batches
        free(device)
    rec.data["train"].append(row)
    rec.save()
    print(json.dumps(row), flush=True)
    return row


def profile_step(case: Case, text: Path, device: str, rec: Recorder, smoke: bool) -> None:
    """Where one training step's device time goes: the image tower's forward + backward and the text
    tower's timed apart, and the step's kernels and operators by self device time (``profile.txt``)."""
    from torch.profiler import ProfilerActivity, profile

    import torch.nn.functional as F

    from medalign.data.augment import jitter_intensity

    free(device)
    _, module, optimizer, batches = training_setup(case, text, device, smoke)
    model = module.model
    plain_steps(module, optimizer, batches, device, 2, 1)

    def timed(fn, reps: int = 2 if smoke else 6) -> float:
        fn()
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - t) / reps

    def image_only():
        with autocast(device):
            out = model.encode_image(jitter_intensity(batches[0]["image"], batches[0]["intensity_jitter"]))
        out.float().sum().backward()

    def text_only():
        with autocast(device):
            out = F.normalize(model.text.proj(model.text.pooled(**batches[0]["tokens"])), dim=-1)
        out.float().sum().backward()

    def stem_only():  # the first convolution alone, at full resolution (1 input channel)
        stem = model.image.backbone.conv1 if hasattr(model.image.backbone, "conv1") else None
        if stem is None:
            return
        with autocast(device):
            out = stem(batches[0]["image"].float() / 255.0)
        out.float().mean().backward()

    split = {"image_tower_fwd_bwd_s": timed(image_only), "text_tower_fwd_bwd_s": timed(text_only), "stem_conv_fwd_bwd_s": timed(stem_only)}
    model.zero_grad(set_to_none=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        plain_steps(module, optimizer, batches, device, 0, 2)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90)
    (rec.out / "profile.txt").write_text(f"{case}\n{json.dumps(split)}\n\n{table}\n")
    rec.data["profile"] = {"case": f"{case.preset} {case.encoder} batch {case.batch} {'channels-last' if case.channels_last else 'contiguous'}",
                           **{k: round(v, 4) for k, v in split.items()}}
    rec.save()
    print(json.dumps(rec.data["profile"]), flush=True)
    print(table[:6000], flush=True)
    model = module = optimizer = batches = None  # the device memory back before the next section
    free(device)


def fill_mfu(rec: Recorder, peak: float | None, measured: float | None) -> None:
    """MFU per row: counted FLOPs of its (uncompiled) configuration over the step time."""
    flops = {(r["preset"], r["encoder"], r["label"], r["batch"]): r["flops_per_step"] for r in rec.data["train"] if "flops_per_step" in r}
    for r in rec.data["train"]:
        f = r.get("flops_per_step") or flops.get((r["preset"], r["encoder"], r["label"], r["batch"]))
        if f and "step_s" in r:
            r["flops_per_step"] = f
            r["achieved_tflops"] = round(f / r["step_s"] / 1e12, 1)
            if peak:
                r["mfu_datasheet"] = round(f / r["step_s"] / (peak * 1e12), 3)
            if measured:
                r["mfu_measured_matmul"] = round(f / r["step_s"] / (measured * 1e12), 3)


def lightning_overhead(case: Case, text: Path, device: str, rec: Recorder, smoke: bool) -> None:
    """The same configuration under medalign's ``PretrainModule`` and a Lightning Trainer (bf16-mixed,
    clip 1.0): seconds per step against the plain loop's (bench/train.py's method on the device)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    free(device)
    config, module, optimizer, batches = training_setup(case, text, device, smoke)
    config.trainer.precision = "bf16-mixed" if device == "cuda" else "32-true"
    steps = 3 if smoke else 15
    # the plain loop first, on the same model and batches (both then run warm)
    _, plain = plain_steps(module, optimizer, batches, device, 3, steps)
    model = module.model
    del optimizer, module
    sec = bench_train.lightning_loop(model, config, [batches[i % 2] for i in range(steps + 3)], device)
    row = {"preset": case.preset, "encoder": case.encoder, "batch": case.batch, "lightning_step_s": round(sec, 4),
           "lightning_volumes_per_s": round(case.batch / sec, 1), "plain_step_s": round(plain, 4),
           "lightning_over_plain": round(plain / sec, 3)}
    del model, batches
    free(device)
    rec.data["lightning"].append(row)
    rec.save()
    print(json.dumps(row), flush=True)


def _env() -> dict:
    """This process's environment with the repository first on PYTHONPATH (carried wheels stay on it)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def prepare_set(tmp: Path, studies: int, workers: int, smoke: bool) -> tuple[Path, dict]:
    """Synthetic chest-CT DICOM studies, prepared by ``medalign prep --config chest_ct`` (smoke: demo_ct)."""
    from medalign.synth.writer import synthesize

    t = time.perf_counter()
    raw = synthesize(tmp / "raw", "ct", studies=studies, seed=3)
    synth_s = time.perf_counter() - t
    out = tmp / "dataset"
    cmd = [sys.executable, "-m", "medalign.cli.main", "prep", "--images", str(raw["images"]), "--reports", str(raw["reports"]),
           "--out", str(out), "--config", "demo_ct" if smoke else "chest_ct", "--workers", str(workers)]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    prep_s = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"prep failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return out, {"studies": studies, "synth_s": round(synth_s, 1), "prep_s": round(prep_s, 1), "prep_workers": workers,
                 "prep_studies_per_s": round(studies / prep_s, 2)}


def loader_rate(dataset: Path, preset: str, batch: int, workers: int, seconds: float, text: Path, smoke: bool) -> float:
    """Volumes/s out of medalign's training loader (the preset's augmentation, intensity on the
    device, sentence sampling tokenised in the workers), pinned memory, for about ``seconds``."""
    import numpy as np

    from medalign.data.augment import build_augmentation
    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest
    from medalign.train.module import make_collate

    from transformers import AutoTokenizer

    config = pretrain_config(preset, "resnet18_3d", {}, text, smoke)
    d = config.data
    train = read_manifest(dataset)
    size = np.load(train.volume_path(0), mmap_mode="r").shape
    augment = build_augmentation(d.flip_axes, 0.0, d.crop_scale, size)
    ds = StudyDataset(train, augment=augment, text_field=d.text_field, sentence_sampling=d.sentence_sampling, device_intensity=d.intensity)
    collate = make_collate(AutoTokenizer.from_pretrained(str(text)), config.model.text.max_length)
    # the sampler draws with replacement so a small set gives as many batches as the time asks for
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**6)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate,
                                         pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, drop_last=True)
    it = iter(loader)
    for _ in range(max(2, workers)):  # workers started and their first batches out of the way
        next(it)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        n += next(it)["image"].shape[0]
    rate = n / (time.perf_counter() - t)
    del it, loader
    return rate


def repeated_set(dataset: Path, out: Path, times: int) -> Path:
    """The prepared set with its training rows listed ``times`` over (ids suffixed, volumes shared):
    epochs as long as a real set's, so that the loader's restart at each epoch does not dominate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(dataset / "manifest.parquet")
    train = table.filter(pa.compute.equal(table["split"], "train"))
    parts = [table]
    for i in range(1, times):
        ids = pa.array([f"{sid}~{i}" for sid in train["study_id"].to_pylist()])
        volumes = pa.array([str((dataset / v).resolve()) for v in train["volume"].to_pylist()])
        parts.append(train.set_column(train.schema.get_field_index("study_id"), "study_id", ids)
                     .set_column(train.schema.get_field_index("volume"), "volume", volumes))
    out.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(dataset):
        if name != "manifest.parquet":
            (out / name).symlink_to((dataset / name).resolve())
    pq.write_table(pa.concat_tables(parts), out / "manifest.parquet")
    return out


def pretrain_end_to_end(dataset: Path, text: Path, run: Path, batch: int, steps: int, smoke: bool) -> dict:
    """``medalign pretrain`` on the prepared set (its training rows repeated into a long epoch):
    volumes/s as the run logs it (``train/volumes_per_s``)."""
    import csv

    dataset = repeated_set(dataset, run.parent / "dataset_repeated", 4 if smoke else 40)

    overrides = [f"model.text.model={text}", f"trainer.max_steps={steps}", f"trainer.log_every_n_steps={2 if smoke else 10}", f"data.batch_size={batch}",
                 "validation.every_n_steps=null", "trainer.checkpoint_every=100000"]
    if smoke:
        overrides += ["trainer.accelerator=cpu", "data.num_workers=0", "model.text.max_length=32"]
    cmd = [sys.executable, "-m", "medalign.cli.main", "pretrain", "--config", "demo_ct" if smoke else "chest_ct", "--data", str(dataset),
           "--out", str(run), *overrides]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - t
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {' | '.join(done.stderr.strip().splitlines()[-3:])}"}
    rates = []
    for path in sorted(run.glob("**/metrics.csv")):
        with open(path) as f:
            rates += [float(r["train/volumes_per_s"]) for r in csv.DictReader(f) if r.get("train/volumes_per_s")]
    late = rates[1:] or rates  # each logged rate is the mean since the previous one; the first holds the start-up
    return {"steps": steps, "batch": batch, "wall_s": round(wall, 1), "logged_steps": len(rates),
            "volumes_per_s_median": round(sorted(late)[len(late) // 2], 1) if late else None}


def inference_rates(dataset: Path, text: Path, device: str, smoke: bool, workers: int) -> list[dict]:
    """Studies/s of the image tower over the prepared set: ``embed_studies`` as zeroshot/index call it,
    and batched through a DataLoader with bf16 autocast (fp32 on CPU)."""
    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest
    from medalign.models import DualEncoder
    from medalign.models.inference import embed_studies

    config = pretrain_config("chest_ct", "resnet18_3d", {}, text, smoke)
    model = DualEncoder(config.model).to(device).eval()
    manifest = read_manifest(dataset)
    if smoke:
        manifest = manifest.subset_rows(range(min(len(manifest), 8)))
    rows = []
    for batch in (16, 32):
        embed_studies(model, manifest.subset_rows(range(min(len(manifest), batch))), batch_size=batch)  # warm-up (cuDNN autotuning)
        sync(device)
        t = time.perf_counter()
        embed_studies(model, manifest, batch_size=batch)
        sync(device)
        rows.append({"path": "embed_studies (fp32, main process)", "batch": batch, "studies": len(manifest),
                     "studies_per_s": round(len(manifest) / (time.perf_counter() - t), 1)})
        loader = torch.utils.data.DataLoader(StudyDataset(manifest), batch_size=batch, num_workers=workers, pin_memory=device == "cuda")
        for rep in range(2):  # the first pass warms the workers and the page cache
            sync(device)
            t = time.perf_counter()
            with torch.no_grad(), autocast(device):
                for b in loader:
                    model.encode_image(b["image"].to(device, non_blocking=True)).float().cpu()
            sync(device)
        rows.append({"path": f"DataLoader ({workers} workers) + bf16 autocast" if device == "cuda" else f"DataLoader ({workers} workers)",
                     "batch": batch, "studies": len(manifest), "studies_per_s": round(len(manifest) / (time.perf_counter() - t), 1)})
    del model
    free(device)
    return rows


def markdown(data: dict) -> str:
    """The figures as the tables docs/benchmarks.md carries."""
    dev = data["device"]
    lines = [f"Device: {dev.get('name')} ({dev.get('memory_gib')} GiB), {dev.get('cpus')} CPU cores, torch {dev.get('torch')}, "
             f"CUDA {dev.get('cuda')}, Python {dev.get('python')}; {dev.get('count')} device(s).", ""]
    c = data["ceilings"]
    if c:
        lines += [f"Measured ceilings: matrix product {c.get('matmul_bf16_tflops', c.get('matmul_fp32_tflops'))} TFLOP/s "
                  f"({c['matmul_size']}³), device-to-device copy {c['copy_tb_per_s']} TB/s.", ""]
    lines += ["| preset | encoder | volume | batch | layout | compile | volumes/s | step (ms) | TFLOP/step | achieved TFLOP/s | MFU (datasheet) | MFU (measured matmul) | peak GiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["train"]:
        layout = ("channels-last" if r["channels_last"] else "contiguous") + (f", {r['label']}" if r.get("label") else "")
        if "error" in r:
            cells = [r["error"]] + [""] * 6
        else:
            cells = [f"{r['volumes_per_s']:.1f}", f"{r['step_s'] * 1000:.0f}", f"{r.get('flops_per_step', 0) / 1e12:.2f}",
                     f"{r.get('achieved_tflops', '')}", f"{r['mfu_datasheet']:.1%}" if "mfu_datasheet" in r else "",
                     f"{r['mfu_measured_matmul']:.1%}" if "mfu_measured_matmul" in r else "", f"{r.get('peak_memory_gib', '')}"]
        lines.append(f"| {r['preset']} | {r['encoder']} | {'×'.join(map(str, r['size']))} | {r['batch']} | {layout} | "
                     f"{'on (first step ' + str(r.get('first_step_s')) + ' s)' if r['compile'] else 'off'} | " + " | ".join(cells) + " |")
    if data.get("profile"):
        pr = data["profile"]
        lines += ["", f"Where a step's time goes ({pr['case']}): image tower forward + backward {pr['image_tower_fwd_bwd_s'] * 1000:.0f} ms, "
                  f"text tower {pr['text_tower_fwd_bwd_s'] * 1000:.0f} ms, the first convolution alone {pr['stem_conv_fwd_bwd_s'] * 1000:.0f} ms "
                  "(kernels by device time: profile.txt)."]
    for r in data["lightning"]:
        lines += ["", f"medalign's Lightning module, {r['preset']} batch {r['batch']}: {r['lightning_volumes_per_s']} volumes/s"
                  + (f", {r['lightning_over_plain']:.3f}x the plain loop's throughput" if "lightning_over_plain" in r else "")]
    ld = data["loader"]
    if ld:
        lines += ["", f"Loader ({ld.get('studies')} prepared studies, prep {ld.get('prep_studies_per_s')} studies/s with "
                  f"{ld.get('prep_workers')} workers; batch {ld.get('batch')}, pinned memory):", "",
                  "| workers | volumes/s | step demand (volumes/s) | loader / demand |", "|---|---|---|---|"]
        for w, v in ld.get("rates", {}).items():
            demand = ld.get("demand_volumes_per_s")
            lines.append(f"| {w} | {v:.1f} | {demand} | {v / demand:.2f}x |" if demand else f"| {w} | {v:.1f} | | |")
    p = data["pretrain"]
    if p:
        lines += ["", "`medalign pretrain` end to end: " + (p["error"] if "error" in p else
                  f"{p['volumes_per_s_median']} volumes/s (median of the logged rates after the first), batch {p['batch']}, "
                  f"{p['steps']} steps in {p['wall_s']} s wall-clock including start-up")]
    if data["inference"]:
        lines += ["", "| inference path | batch | studies/s |", "|---|---|---|"]
        lines += [f"| {r['path']} | {r['batch']} | {r['studies_per_s']} |" for r in data["inference"]]
    if data["fsdp"]:
        lines += ["", f"FSDP: {data['fsdp'].get('note', data['fsdp'])}"]
    if data.get("estimate"):
        lines += ["", data["estimate"]]
    if data["skipped"]:
        lines += ["", "Not measured (time budget): " + "; ".join(data["skipped"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench_out/gpu"))
    p.add_argument("--budget-s", type=float, default=330.0, help="stop starting new measurements after this many seconds")
    p.add_argument("--smoke", action="store_true", help="every section at toy sizes on the CPU")
    p.add_argument("--tokenizer", type=Path, default=None, help="a tokenizer folder (default: the built-in MiniLM's)")
    p.add_argument("--studies", type=int, default=48, help="synthetic studies prepared for the loader and inference sections")
    p.add_argument("--data", type=Path, default=None, help="a prepared dataset to use instead of preparing a synthetic one")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sections", default="chest,stem,largest,oct,profile,lightning,loader,pretrain,inference,compile",
                   help="comma-separated, run in this order of priority whatever the order given")
    a = p.parse_args()
    smoke, device = a.smoke, "cpu" if a.smoke else a.device
    rec = Recorder(a.out, a.budget_s)
    cpus = len(os.sched_getaffinity(0))
    rec.data["device"] = {"name": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({cpus} cores)", "cpus": cpus,
                          "count": torch.cuda.device_count() if device == "cuda" else 0, "torch": torch.__version__,
                          "cuda": torch.version.cuda, "python": platform.python_version(),
                          "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30) if device == "cuda" else None}
    from medalign.train.runner import configure_cuda_backends

    configure_cuda_backends(deterministic=False)  # what `medalign pretrain` sets
    rec.data["ceilings"] = ceilings(device, smoke)
    rec.save()
    print(json.dumps(rec.data["device"]), json.dumps(rec.data["ceilings"]), flush=True)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in rec.data["device"]["name"]), None) if device == "cuda" else None
    measured = rec.data["ceilings"].get("matmul_bf16_tflops") if device == "cuda" else None

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        text = text_folder(tmp, a.tokenizer, smoke)
        chest = (32, 32, 16) if smoke else (240, 240, 120)
        oct_size = (32, 32, 16) if smoke else (128, 128, 64)
        batches = (2,) if smoke else (16, 32, 64)
        want = set(a.sections.split(","))

        def case(c: Case, seconds: float) -> None:
            if rec.room_for(seconds, f"{c.preset} {c.encoder} {c.label} batch {c.batch} {'channels-last' if c.channels_last else 'contiguous'}"
                            f"{' compiled' if c.compile else ''}"):
                run_case(c, text, device, rec, smoke, peak)

        # the order is the priority: what a cut-short run leaves out comes last
        if "chest" in want:  # 1. chest_ct, eager, both layouts
            for cl in (False, True):
                for b in batches:
                    case(Case("chest_ct", "chest_ct", "resnet18_3d", chest, b, channels_last=cl), 15)
        if "stem" in want:  # the phase stem (default) against MONAI's direct strided stem, channels-last
            for b, phase in [(b, True) for b in batches] + [(batches[len(batches) // 2], False)]:
                case(Case("stem", "chest_ct", "resnet18_3d", chest, b, {"phase_stem": phase}, channels_last=True,
                          label="phase stem" if phase else "direct stem"), 15)
        eager = {(r["batch"], r["channels_last"]): r.get("step_s", math.inf) for r in rec.data["train"] if r["preset"] == "chest_ct"}
        best_cl = eager.get((batches[0], True), math.inf) < eager.get((batches[0], False), math.inf)
        if "largest" in want:  # 2. the largest registered encoder, and oct
            patch = [16 if s % 16 == 0 else 8 for s in chest]
            vit = {"img_size": list(chest), "patch_size": patch}
            if smoke:
                vit.update(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64)
            for fused in (True, False):
                case(Case("largest", "chest_ct", "vit_3d", chest, 2 if smoke else 8, {**vit, "fused_attention": fused},
                          label="fused attention" if fused else "MONAI einsum attention"), 20)
        if "oct" in want:
            for cl, b in ((False, 4),) if smoke else ((False, 48), (True, 48), (False, 96)):
                case(Case("oct", "oct", "resnet18_3d", oct_size, b, channels_last=cl), 10)
        if "profile" in want and rec.room_for(30, "profile of a chest_ct step"):
            profile_step(Case("chest_ct", "chest_ct", "resnet18_3d", chest, batches[len(batches) // 2], channels_last=True), text, device, rec, smoke)
        if "lightning" in want and rec.room_for(20, "Lightning module, chest_ct"):
            lightning_overhead(Case("chest_ct", "chest_ct", "resnet18_3d", chest, batches[0]), text, device, rec, smoke)
        fill_mfu(rec, peak, measured)
        rec.save()
        # 3. the loader against the step's demand, 4. the command end to end, 5. inference
        dataset = None
        if a.data is not None:
            from medalign.prep.manifest import read_manifest

            dataset = a.data
            rec.data["loader"].update(studies=len(read_manifest(dataset)), prepared="given (--data)")
        elif want & {"loader", "pretrain", "inference"} and rec.room_for(45, "synthetic chest-CT set for the loader"):
            try:
                dataset, facts = prepare_set(tmp, 6 if smoke else a.studies, 2 if smoke else max(1, cpus - 1), smoke)
                rec.data["loader"].update(facts)
            except Exception as e:
                rec.data["loader"]["error"] = f"{type(e).__name__}: {e}"
            rec.save()
        if dataset is not None and "loader" in want:
            batch = batches[0]
            demand = next((r["volumes_per_s"] for r in rec.data["train"] if r["preset"] == "chest_ct" and r["batch"] == batch
                           and r.get("volumes_per_s") and not r["compile"] and r["channels_last"] == best_cl), None)
            rec.data["loader"].update(batch=batch, demand_volumes_per_s=demand, rates={})
            for w in ((0, 2) if smoke else (8, cpus - 1)):
                if rec.room_for(20, f"loader with {w} workers"):
                    rec.data["loader"]["rates"][str(w)] = round(loader_rate(dataset, "chest_ct", batch, w, 0.5 if smoke else 10, text, smoke), 1)
                    rec.save()
                    print("loader", w, rec.data["loader"]["rates"][str(w)], flush=True)
        if dataset is not None and "pretrain" in want and rec.room_for(50, "medalign pretrain end to end"):
            rec.data["pretrain"] = pretrain_end_to_end(dataset, text, tmp / "run", batches[0], 4 if smoke else 60, smoke)
            rec.save()
            print("pretrain", rec.data["pretrain"], flush=True)
        if dataset is not None and "inference" in want and rec.room_for(25, "inference"):
            try:
                rec.data["inference"] = inference_rates(dataset, text, device, smoke, 0 if smoke else 8)
            except Exception as e:
                rec.data["inference"] = [{"path": f"error {type(e).__name__}: {e}", "batch": 0, "studies_per_s": 0}]
            rec.save()
        if "compile" in want:  # last: each batch size compiles anew
            for b in batches:
                case(Case("chest_ct", "chest_ct", "resnet18_3d", chest, b, channels_last=best_cl, compile=True), 60)
        fill_mfu(rec, peak, measured)
        # 6. FSDP
        n = torch.cuda.device_count() if device == "cuda" else 0
        rec.data["fsdp"] = {"note": "one device visible: FSDP steps need two or more (not measured)" if n < 2
                            else f"{n} devices visible; FSDP steps are run by tests/test_distributed.py's launch on a multi-GPU node"}
    best = max((r for r in rec.data["train"] if r["preset"] == "chest_ct" and r.get("volumes_per_s")), key=lambda r: r["volumes_per_s"], default=None)
    if best and device == "cuda":
        volumes = 50_000 * 20
        rate = min(best["volumes_per_s"], max(rec.data["loader"].get("rates", {}).values(), default=math.inf))
        hours = volumes / rate / 3600
        rec.data["estimate"] = (f"CT-RATE-sized run (50,000 volumes x 20 epochs = 1,000,000 volumes) at {rate:.0f} volumes/s per GPU "
                                f"(best chest_ct step, batch {best['batch']}, capped by the loader): {hours:.1f} h on one GPU, "
                                f"{hours / 8:.1f} h on an 8-GPU node if it scales linearly (DDP's all-reduce and the all-gather "
                                f"of embeddings are not in this figure)")
    rec.save()
    (a.out / "gpu.md").write_text(markdown(rec.data))
    print(markdown(rec.data), flush=True)


if __name__ == "__main__":
    main()
