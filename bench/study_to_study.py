"""Study -> study retrieval of trained runs, on the demo's test split and on held-out phantoms
(issue 29: did the 5 mm recipe lose similar-case retrieval?).

Each ``--run RUN:TEST_DATA:HELDOUT_DATA`` is indexed (``medalign index``) and scored
(``medalign retrieval-eval``: mAP@10, a hit relevant when it shares a positive finding with the
query) on ``TEST_DATA``'s test split and on every study of ``HELDOUT_DATA``; each model needs the
data prepared with its own preset. The first run is the baseline the others' ratios are taken
against.

    .venv/bin/python bench/study_to_study.py --out /tmp/s2s \\
        --run tests/data/pointing_model:/tmp/s2s/ds8_0:/tmp/s2s/ds8_11 \\
        --run RUN5MM:DATA5MM_SEED0:DATA5MM_SEED11 ...
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

MEDALIGN = [str(Path(sys.executable).parent / "medalign")]  # the console script of this environment


def study_map(run: Path, data: Path, split: str, out: Path) -> tuple[float, float, int]:
    """(mAP@10, chance, studies) of ``run`` on ``data``'s ``split``."""
    index, metrics = out / "index", out / "eval"
    shutil.rmtree(out, ignore_errors=True)  # a rerun scores afresh
    subprocess.run(MEDALIGN + ["index", "--checkpoint", str(run), "--data", str(data), "--out", str(index),
                               "--split", split, "--device", "cpu"], check=True, capture_output=True)
    subprocess.run(MEDALIGN + ["retrieval-eval", "--index", str(index), "--data", str(data), "--out", str(metrics),
                               "--split", split], check=True, capture_output=True)
    m = json.loads((metrics / "metrics.json").read_text())
    return m["study_to_study"]["map@10"], m["study_to_study"]["chance_map@10"], m["n_studies"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, help="RUN:TEST_DATA:HELDOUT_DATA (first = baseline)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    for k, spec in enumerate(args.run):
        run, test_data, held_data = (Path(p) for p in spec.split(":"))
        scores = [study_map(run, d, split, args.out / f"{k}_{split}")
                  for d, split in ((test_data, "test"), (held_data, "all"))]
        rows.append((run, scores))
    base = rows[0][1]
    print(f"{'run':60s} {'test mAP@10':>12s} {'ratio':>6s} {'held-out mAP@10':>16s} {'ratio':>6s}")
    for run, scores in rows:
        cells = " ".join(f"{m:12.3f} {m / b[0]:5.3f}x" for (m, _, _), b in zip(scores, base))
        print(f"{str(run)[-60:]:60s} {cells}")
    (t_chance, n_test), (h_chance, n_held) = ((s[1], s[2]) for s in base)
    print(f"chance: test {t_chance:.3f} ({n_test} studies), held-out {h_chance:.3f} ({n_held} studies)")


if __name__ == "__main__":
    main()
