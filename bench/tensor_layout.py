"""What the image tower pays for its input's type and memory layout, side by side in one process.

1. MONAI MetaTensor vs a plain tensor (the same values): MONAI's augmentation returns MetaTensors,
   whose metadata bookkeeping runs on every op; medalign's dataset hands the model plain tensors.
2. channels_last_3d vs the default contiguous layout for the image tower's forward + backward.

Each row: median seconds over ``--repeats`` after a warm-up, and the ratio against the baseline
(MetaTensor, contiguous). Runs on CPU by default, ``--device cuda`` on a GPU (bf16 autocast there).

    .venv/bin/python bench/tensor_layout.py [--encoder resnet18_3d] [--size 96 96 48] [--batch 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up (cuDNN autotuning, allocator)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from monai.data import MetaTensor

    from medalign.models.image import ImageEncoder

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="resnet18_3d")
    p.add_argument("--size", type=int, nargs=3, default=[96, 96, 48])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    model = ImageEncoder(a.encoder, 512, {}).to(a.device).train()
    x = torch.rand(a.batch, 1, *a.size, device=a.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if a.device == "cuda" else torch.autocast("cpu", enabled=False)

    def step(inp, net=model):
        with autocast:
            out = net(inp)
        out.float().sum().backward()
        net.zero_grad(set_to_none=True)

    print(f"{a.encoder}, batch {a.batch} x {tuple(a.size)}, {a.device}, forward + backward, median of {a.repeats}")
    meta = timed(lambda: step(MetaTensor(x)), a.repeats, a.device)
    plain = timed(lambda: step(x), a.repeats, a.device)
    print(f"| MetaTensor (baseline) | {meta:.3f} s | 1.00x |")
    print(f"| plain tensor          | {plain:.3f} s | {meta / plain:.2f}x |")
    contiguous = plain
    last = model.to(memory_format=torch.channels_last_3d)
    x_last = x.contiguous(memory_format=torch.channels_last_3d)
    cl = timed(lambda: step(x_last, last), a.repeats, a.device)
    print(f"| contiguous (baseline) | {contiguous:.3f} s | 1.00x |")
    print(f"| channels_last_3d      | {cl:.3f} s | {contiguous / cl:.2f}x |")


if __name__ == "__main__":
    main()
