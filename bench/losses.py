"""Compare the four training objectives at equal steps on one prepared dataset, over several seeds.

For each loss and seed: ``medalign pretrain`` (the ``--config`` preset, ``demo_ct`` unless told,
with ``loss.name`` set), then ``medalign zeroshot`` (test macro AUROC, or the macro AUROC over all of
``--eval-data``, a held-out dataset: on a 28-study test split one finding's 95% interval is 0.3-0.4
wide) and ``medalign index`` + ``medalign retrieval-eval`` (report->study Recall@5, study->study mAP@10).
Prints mean ± spread (half the min-max range) per loss; the baseline is plain InfoNCE on the same
data, steps, seeds and model.

    .venv/bin/python bench/losses.py --data /tmp/demo_ct/dataset --labels /tmp/demo_ct/raw/labels.csv \
        --out /tmp/lossbench --steps 120 --seeds 0 1 2
    .venv/bin/python bench/losses.py --config demo_oct --data /tmp/oct/dataset --labels /tmp/oct/raw/labels.csv \
        --eval-data /tmp/oct_held/dataset --eval-labels /tmp/oct_held/raw/labels.csv --out /tmp/lossbench_oct --steps 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

LOSSES = {
    "info_nce": ["loss.name=info_nce"],
    "siglip": ["loss.name=siglip"],
    "soft_labels": ["loss.name=soft_labels", "loss.mix=0.5"],
    "cwcl": ["loss.name=cwcl", "loss.mix=0.5"],
}
MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


def run_one(data: Path, labels: Path, out: Path, loss: str, seed: int, steps: int, threads: int, reuse: bool = False,
            config: str = "demo_ct", held: tuple[Path, Path] | None = None) -> dict:
    run = out / f"{loss}_s{seed}"
    metrics = run / "bench.json"
    if reuse and metrics.is_file():  # only when asked: a benchmark measures afresh
        return json.loads(metrics.read_text())
    if run.exists():
        import shutil

        shutil.rmtree(run)  # a fresh run, not a resumed one
    subprocess.run(MEDALIGN + ["pretrain", "--data", str(data), "--out", str(run), "--config", config, "--max-steps", str(steps),
                               f"trainer.seed={seed}", f"trainer.threads={threads}", *LOSSES[loss]], check=True, stdout=subprocess.DEVNULL)
    zs_data, zs_labels, zs_split = (*held, "all") if held else (data, labels, "test")
    subprocess.run(MEDALIGN + ["zeroshot", "--checkpoint", str(run), "--data", str(zs_data), "--labels", str(zs_labels), "--split", zs_split,
                               "--out", str(run / "zs")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(MEDALIGN + ["index", "--checkpoint", str(run), "--data", str(data), "--out", str(run / "index")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(MEDALIGN + ["retrieval-eval", "--index", str(run / "index"), "--data", str(data), "--out", str(run / "reval")],
                   check=True, stdout=subprocess.DEVNULL)
    zs = json.loads((run / "zs" / "metrics.json").read_text())
    rv = json.loads((run / "reval" / "metrics.json").read_text())
    result = {"macro_auroc": zs["macro_auroc"], "report_to_study_r5": rv["report_to_study"]["recall@5"],
              "report_to_study_r1": rv["report_to_study"]["recall@1"], "study_to_study_map10": rv["study_to_study"]["map@10"],
              "per_finding": {k: v["auroc"] for k, v in zs["per_finding"].items()}}
    metrics.write_text(json.dumps(result))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", default="demo_ct", help="the pretraining preset each loss is set on (demo_ct, demo_oct, or a YAML)")
    p.add_argument("--eval-data", type=Path, help="a held-out prepared dataset to score zero-shot on (all of it), with --eval-labels")
    p.add_argument("--eval-labels", type=Path)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="keep the figures of runs finished earlier in --out (default: every run afresh)")
    a = p.parse_args()
    rows = {}
    for loss in a.losses:
        held = (a.eval_data, a.eval_labels) if a.eval_data else None
        rows[loss] = [run_one(a.data, a.labels, a.out, loss, s, a.steps, a.threads, a.reuse, a.config, held) for s in a.seeds]
        print(f"{loss} done: {rows[loss]}", flush=True)
    keys = ["macro_auroc", "report_to_study_r1", "report_to_study_r5", "study_to_study_map10"]
    print(f"\n{len(a.seeds)} seeds x {a.steps} steps; mean ± half-range")
    print("| loss | " + " | ".join(keys) + " | AUROC vs info_nce |")
    print("|---" * (len(keys) + 2) + "|")
    base = np.mean([r["macro_auroc"] for r in rows["info_nce"]]) if "info_nce" in rows else None
    for loss, rs in rows.items():
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs])
            cells.append(f"{v.mean():.3f} ± {(v.max() - v.min()) / 2:.3f}")
        ratio = f"{np.mean([r['macro_auroc'] for r in rs]) / base:.3f}x" if base else "-"
        print(f"| {loss} | " + " | ".join(cells) + f" | {ratio} |")
    print("\nper finding, zero-shot AUROC mean ± half-range")
    for loss, rs in rows.items():
        names = [k for k, v in rs[0].get("per_finding", {}).items() if v is not None]
        print(f"{loss}: " + "  ".join(
            f"{k} {np.mean([r['per_finding'][k] for r in rs]):.3f} ± {np.ptp([r['per_finding'][k] for r in rs]) / 2:.3f}" for k in names))


if __name__ == "__main__":
    main()
