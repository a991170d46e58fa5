"""bench/gpu.py, the script a lent GPU runs, kept working on the CPU (``--smoke``): every section
it would run on the device writes its figures, and none fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_writes_every_section(prepared_ct, tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--out", str(out),
                           "--sections", "stem,largest,profile,lightning,loader,inference,compile", "--data", str(prepared_ct)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((out / "gpu.json").read_text())
    rows = data["train"]
    assert {r["label"] for r in rows} >= {"phase stem", "direct stem", "fused attention", "MONAI einsum attention"}
    assert not [r for r in rows if "error" in r]
    assert all(r["volumes_per_s"] > 0 for r in rows) and all(r["flops_per_step"] > 0 for r in rows if not r["compile"])
    # the stem's FLOPs are the model's whatever form runs: the phase and direct stems count the same
    stems = {r["label"]: r["flops_per_step"] for r in rows if r["section"] == "stem"}
    assert stems["phase stem"] == stems["direct stem"]
    assert any(r["compile"] for r in rows)
    assert data["profile"]["image_tower_fwd_bwd_s"] > 0 and (out / "profile.txt").is_file()
    assert data["loader"]["studies"] == 48 and all(v > 0 for v in data["loader"]["rates"].values())
    assert [r["studies_per_s"] > 0 for r in data["inference"]] == [True] * 4
    table = (out / "gpu.md").read_text()
    assert "| chest_ct | resnet18_3d | 32×32×16 | 2 | channels-last, phase stem |" in table and "Not measured" not in table
