"""Training throughput: medalign's Lightning loop against a plain PyTorch loop, side by side.

Both loops train the same dual encoder (a preset's image tower and text tower, its loss, AdamW,
gradient clipping 1.0, the preset's precision) on the same in-memory batches, so the ratio is
the framework's overhead alone. Prints volumes/s for each, the ratio, and on CUDA the model FLOPs
utilisation (FLOPs of one forward+backward counted by ``torch.utils.flop_counter``) and peak memory.

    .venv/bin/python bench/train.py --preset demo_ct --steps 30
    .venv/bin/python bench/train.py --preset chest_ct --device cuda --steps 50          # on a GPU
    .venv/bin/python bench/train.py --preset chest_ct --steps 4 --batch 2 --size 96 96 48  # a CPU smoke run

``chest_ct`` names a BiomedBERT folder; when it is absent, a BERT-base of the same shape is built
from its config (random weights: throughput does not depend on them).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def _text_model_dir(name: str, tmp: Path) -> str:
    from medalign.models.text import BUILTIN_TEXT_MODELS

    if name in BUILTIN_TEXT_MODELS or (Path(name).expanduser() / "config.json").is_file():
        return name
    from transformers import BertConfig, BertModel

    from medalign.models.text import resolve_text_model

    folder = tmp / "bert-base"
    BertModel(BertConfig()).save_pretrained(folder)  # bert-base-uncased's shape; same vocabulary as MiniLM
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(resolve_text_model("builtin:all-minilm-l6-v2"))).save_pretrained(folder)
    return str(folder)


def make_batches(model, n: int, batch: int, size: list[int], k: int, device: str) -> list[dict]:
    """``n`` random batches with report-like texts and labels (the same for both loops)."""
    g = torch.Generator().manual_seed(0)
    words = "no pleural effusion cardiomegaly emphysema nodule consolidation mild moderate right left lobe".split()
    out = []
    for _ in range(n):
        texts = [" ".join(words[int(i)] for i in torch.randint(len(words), (60,), generator=g)) for _ in range(batch)]
        out.append({
            "image": torch.rand(batch, 1, *size, generator=g).to(device),
            "tokens": {kk: v.to(device) for kk, v in model.text.tokenize(texts).items()},
            "labels": (torch.rand(batch, k, generator=g) > 0.6).float().to(device),
            "index": torch.arange(batch, device=device),
        })
    return out


def plain_loop(model, objective, batches, precision: str, device: str, lr: float) -> float:
    """Seconds per step of a hand-written loop (after 3 warm-up steps)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    times = []
    for i, b in enumerate(batches):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            img = model.encode_image(b["image"])
            txt = model.encode_tokens(b["tokens"])
            loss = objective(img.float(), txt.float(), model.scale(), model.logit_bias, b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def lightning_loop(model, config, batches, device: str) -> float:
    """Seconds per step of medalign's PretrainModule under a Lightning Trainer (after 3 warm-up steps)."""
    import lightning as L

    from medalign.train.module import PretrainModule

    class Timer(L.Callback):
        """Times steps 3..n-1 as the plain loop does: a device sync at the two ends only (a sync per
        step would stop the CPU from queueing the next step's kernels while the device works)."""

        def __init__(self, n: int):
            self.n, self.start, self.end = n, None, None

        def on_train_batch_start(self, trainer, module, batch, i):
            if i == 3:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, i):
            if i == self.n - 1:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.end = time.perf_counter()

    timer = Timer(len(batches))
    config.trainer.max_steps = len(batches)
    trainer = L.Trainer(max_steps=len(batches), accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                        precision=config.trainer.precision, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's tips about loaders and loggers, not results
        trainer.fit(PretrainModule(model, config), loader)
    return (timer.end - timer.start) / (len(batches) - 3)


def step_flops(model, objective, batch) -> float:
    """FLOPs of one forward + backward (counted, not estimated)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        img = model.encode_image(batch["image"])
        txt = model.encode_tokens(batch["tokens"])
        objective(img, txt, model.scale(), model.logit_bias, batch["labels"]).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo_ct")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=None, help="default: the preset's data.batch_size")
    p.add_argument("--size", type=int, nargs=3, default=None, help="volume size (default: the preset's prep size)")
    p.add_argument("--precision", default=None, help="default: the preset's (32-true on CPU)")
    a = p.parse_args()

    from medalign.config import load_config
    from medalign.losses import create_loss
    from medalign.models import DualEncoder
    from medalign.prep.config import PrepConfig
    from medalign.train.config import PretrainConfig
    from medalign.train.runner import configure_cuda_backends

    config = load_config(PretrainConfig, a.preset, "pretrain")
    prep = load_config(PrepConfig, a.preset if a.preset != "oct" else "oct", "prep")
    size = a.size or next(list(s.values())[0]["spatial_size"] for s in prep.steps if "crop_or_pad" in s or "resize" in s)
    batch = a.batch or config.data.batch_size
    precision = a.precision or (config.trainer.precision if a.device == "cuda" else "32-true")
    config.trainer.precision = precision
    configure_cuda_backends(deterministic=False)  # what `medalign pretrain` sets, so the benchmark measures training as it runs
    with tempfile.TemporaryDirectory() as tmp:
        config.model.text.model = _text_model_dir(config.model.text.model, Path(tmp))
        results = {}
        for name in ("plain PyTorch loop", "medalign (Lightning)"):
            torch.manual_seed(0)
            model = DualEncoder(config.model).to(a.device)
            objective = create_loss(config.loss.name, config.loss.mix)
            batches = make_batches(model, a.steps + 3, batch, list(size), 5, a.device)
            if a.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            if name.startswith("plain"):
                sec = plain_loop(model, objective, batches, precision, a.device, config.optim.lr)
            else:
                sec = lightning_loop(model, config, batches, a.device)
            mem = torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else float("nan")
            results[name] = (sec, mem)
            if name.startswith("plain"):
                flops = step_flops(model, objective, {k: v for k, v in batches[0].items()})
            del model, batches
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"preset {a.preset}: {config.model.image.name}, volumes {tuple(size)}, batch {batch}, {precision}, {a.steps} timed steps, {dev}")
    print(f"FLOPs per step (forward+backward, counted): {flops / 1e12:.3f} TFLOP")
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in dev), None) if a.device == "cuda" else None
    for name, (sec, mem) in results.items():
        line = f"  {name:22s} {batch / sec:8.2f} volumes/s  {sec * 1000:8.1f} ms/step"
        if peak and precision.startswith("bf16"):
            line += f"  MFU {flops / sec / (peak * 1e12):.1%} of {peak:.0f} TFLOPS bf16"
        if not math.isnan(mem):
            line += f"  peak memory {mem:.1f} GiB"
        print(line)
    plain, ours = results["plain PyTorch loop"][0], results["medalign (Lightning)"][0]
    print(f"medalign / plain loop throughput: {plain / ours:.3f}x (framework overhead {ours / plain - 1:+.1%})")


if __name__ == "__main__":
    main()
