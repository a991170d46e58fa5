"""The image encoders' size and cost at the preset volume sizes (the table in docs/models.md).

For each registered encoder and preset size: parameters; forward FLOPs per volume counted by
``torch.utils.flop_counter`` on meta tensors (no compute, exact for the traced ops); training
memory at batch 8 in fp32, estimated as the activations autograd saves for backward (counted with
``saved_tensors_hooks`` on meta tensors) plus weights, gradients and AdamW's two states. With
``--cuda`` it also measures the real peak of one bf16-autocast training step at batch 8.

    .venv/bin/python bench/models.py
    .venv/bin/python bench/models.py --cuda     # on a GPU machine
"""

from __future__ import annotations

import argparse

import torch

SIZES = {"demo_ct": (48, 48, 40), "oct": (128, 128, 64), "chest_ct": (240, 240, 120)}
ENCODERS = {
    "resnet10_3d": {},
    "resnet18_3d": {},
    "resnet34_3d": {},
    "resnet50_3d": {},
    "densenet121_3d": {},
    "swin_3d": {"feature_size": 48},
    "vit_3d": {},  # img_size and patch_size set per volume size below
}


def _options(name: str, size: tuple[int, int, int]) -> dict | None:
    opts = dict(ENCODERS[name])
    if name == "swin_3d" and any(s % 32 for s in size):
        return None  # Swin's five 2x downsamplings need multiples of 32
    if name == "vit_3d":
        patch = tuple(16 if s % 16 == 0 else 8 for s in size)
        if any(s % p for s, p in zip(size, patch)):
            return None
        opts.update(img_size=list(size), patch_size=list(patch))
    return opts


def count(name: str, size: tuple[int, int, int], batch: int = 8) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from medalign.models import create_image_encoder

    opts = _options(name, size)
    if opts is None:
        return {}
    enc = create_image_encoder(name, 512, **opts).to("meta")  # built on CPU (Swin's init calls .item()), counted on meta
    x1 = torch.empty(1, 1, *size, device="meta")
    xb = torch.empty(batch, 1, *size, device="meta")
    params = sum(p.numel() for p in enc.parameters())
    with FlopCounterMode(display=False) as counter:
        enc.eval()(x1)  # eval: BatchNorm takes a batch of one (the FLOPs are the same)
    enc.train()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(xb)
    memory = sum(saved) + 4 * params * 4  # activations + weights, grads, AdamW exp_avg and exp_avg_sq
    return {"params": params, "gflops": counter.get_total_flops() / 1e9, "mem_gib": memory / 2**30}


def cuda_peak(name: str, size: tuple[int, int, int], batch: int = 8) -> float | None:
    from medalign.models import create_image_encoder

    opts = _options(name, size)
    if opts is None:
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    enc = create_image_encoder(name, 512, **opts).cuda()
    opt = torch.optim.AdamW(enc.parameters())
    x = torch.randn(batch, 1, *size, device="cuda")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            enc(x).float().square().mean().backward()
        opt.step()
        return torch.cuda.max_memory_allocated() / 2**30
    except torch.OutOfMemoryError:
        return float("inf")
    finally:
        del enc, opt, x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cuda", action="store_true")
    a = p.parse_args()
    header = "| encoder | params (M) | " + " | ".join(f"GFLOPs/volume {k} {'×'.join(map(str, s))}" for k, s in SIZES.items())
    header += " | " + " | ".join(f"memory b8 fp32 {k} (GiB, est.)" for k in SIZES)
    if a.cuda:
        header += " | " + " | ".join(f"peak b8 bf16 {k} (GiB, {torch.cuda.get_device_name()})" for k in SIZES)
    print(header + " |")
    print("|---" * (2 + len(SIZES) * (3 if a.cuda else 2)) + "|")
    for name in ENCODERS:
        rows = {k: count(name, s) for k, s in SIZES.items()}
        params = next((r["params"] for r in rows.values() if r), 0)
        cells = [f"{r['gflops']:.1f}" if r else "n/a" for r in rows.values()] + [f"{r['mem_gib']:.1f}" if r else "n/a" for r in rows.values()]
        if a.cuda:
            peaks = [cuda_peak(name, s) for s in SIZES.values()]
            cells += ["n/a" if v is None else ("OOM" if v == float("inf") else f"{v:.1f}") for v in peaks]
        print(f"| {name} | {params / 1e6:.1f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
