"""What progress reporting costs a training step: medalign's ``TrainingProgress`` against
Lightning's own bars, side by side in one process. Each variant's callback hooks are timed by
Lightning's ``SimpleProfiler`` (``[Callback]<name>.<hook>``) during a fit of a one-layer model, so
the figure is the reporting's own cost per step, not the run-to-run spread of the whole step.

Variants (each a full ``Trainer.fit`` of the same steps, output to ``os.devnull``):
  none            no progress at all (the floor)
  lightning-tqdm  Lightning's ``TQDMProgressBar`` (the baseline: what a Lightning user gets)
  lightning-rich  Lightning's ``RichProgressBar`` (a forced terminal)
  medalign-bar    ``TrainingProgress`` on a terminal (a tqdm bar counting the run's steps)
  medalign-lines  ``TrainingProgress`` writing a line every 30 s (a log file, the default)
  medalign-every  ``TrainingProgress`` writing a line at every step (worst case)

Prints microseconds per step spent in each variant's hooks, and each as a ratio of
``lightning-tqdm``'s; ``none`` prints the step it would add them to.

    .venv/bin/python bench/progress.py --steps 3000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from medalign.train.progress import TrainingProgress


class Tiny(L.LightningModule):
    """One linear layer on a fixed batch: the step costs little, so reporting shows."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 16)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch["image"]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _loader(steps: int):
    data = [{"image": torch.randn(4, 16)} for _ in range(64)]
    return torch.utils.data.DataLoader(data * (steps // 64 + 1), batch_size=None, shuffle=False)


def _fit(variant: str, steps: int, sink) -> tuple[float, float]:
    """(seconds of the whole fit, seconds spent in the progress callback's hooks)."""
    from lightning.pytorch.profilers import SimpleProfiler

    callbacks, bar = [], False
    if variant == "lightning-tqdm":
        callbacks, bar = [TQDMProgressBar(refresh_rate=1)], True
    elif variant == "lightning-rich":
        callbacks, bar = [RichProgressBar(refresh_rate=1, console_kwargs={"force_terminal": True, "file": sink})], True
    elif variant == "medalign-bar":
        callbacks = [TrainingProgress(live=True, stream=sink)]
    elif variant == "medalign-lines":
        callbacks = [TrainingProgress(live=False, stream=sink)]
    elif variant == "medalign-every":
        os.environ["MEDALIGN_PROGRESS_INTERVAL"] = "1e-9"
        callbacks = [TrainingProgress(live=False, stream=sink)]
    profiler = SimpleProfiler()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=bar, callbacks=callbacks, profiler=profiler)
    start = time.perf_counter()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        trainer.fit(Tiny(), _loader(steps))
    took = time.perf_counter() - start
    os.environ.pop("MEDALIGN_PROGRESS_INTERVAL", None)
    names = ("TQDMProgressBar", "RichProgressBar", "TrainingProgress")
    hooks = sum(sum(d) for k, d in profiler.recorded_durations.items() if k.startswith("[Callback]") and any(n in k for n in names))
    return took, hooks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    variants = ["none", "lightning-tqdm", "lightning-rich", "medalign-bar", "medalign-lines", "medalign-every"]
    fits: dict[str, list[float]] = {v: [] for v in variants}
    hooks: dict[str, list[float]] = {v: [] for v in variants}
    with open(os.devnull, "w") as sink:
        _fit("none", 200, sink)  # warm-up: imports, first-fit set-up
        for _ in range(a.repeats):  # interleaved, so drift hits every variant alike
            for v in variants:
                took, spent = _fit(v, a.steps, sink)
                fits[v].append(took)
                hooks[v].append(spent)
    per_step = {v: 1e6 * statistics.median(t) / a.steps for v, t in hooks.items()}
    base = per_step["lightning-tqdm"]
    print(f"{a.steps} steps x {a.repeats} repeats (median); a step without progress takes {1e6 * statistics.median(fits['none']) / a.steps:.0f} us")
    print(f"{'variant':<16} {'us/step in its hooks':>21} {'ratio to lightning-tqdm':>24}")
    for v in variants[1:]:
        print(f"{v:<16} {per_step[v]:>21.1f} {per_step[v] / base:>24.2f}")


if __name__ == "__main__":
    main()
