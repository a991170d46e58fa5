"""The package as a user installs it: a wheel built from this tree, installed into a fresh virtual
environment, runs `medalign prep --config chest_ct` from an unrelated folder (the presets and
vocabularies ship inside the package, not beside a source tree)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
from nibabel.testing import data_path

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_installed_elsewhere_finds_its_presets(tmp_path):
    # built from a copy of the sources: setuptools writes its build/ folder beside them
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "medalign", src / "medalign", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = wheels.glob("medalign-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    # the dependencies come from this environment's site-packages (its editable medalign is not on that path)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": sysconfig.get_paths()["purelib"], "HF_HUB_OFFLINE": "1"}
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "images").mkdir(parents=True)
    shutil.copy(Path(data_path) / "anatomical.nii", elsewhere / "images" / "s1.nii")
    (elsewhere / "reports.jsonl").write_text(json.dumps({"study_id": "s1", "report": "Small right pleural effusion."}) + "\n")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import medalign; print(medalign.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert str(venv) in where.stdout, where.stdout + where.stderr
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "medalign.cli.main", "prep", "--images", "images", "--reports",
                          "reports.jsonl", "--out", "ds", "--config", "chest_ct", "--workers", "1"],
                         capture_output=True, text=True, cwd=elsewhere, env=env)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    rows = pq.read_table(elsewhere / "ds" / "manifest.parquet").to_pylist()
    assert rows[0]["shape"] == [240, 240, 120] and rows[0]["pleural effusion"] == 1  # chest_ct's grid, its vocabulary
