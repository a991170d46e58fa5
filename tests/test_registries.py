"""Each registry picks up a new entry without edits elsewhere: a toy reader (in-process and as another
package's entry point) reaches ``convert``, ``prep``, the default-preset choice and ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from medalign.cli.main import build_parser, default_prep_preset
from medalign.cli.main import main as cli
from medalign.io import readers
from medalign.io.volume import Volume

TOY_SPACING = (2.0, 3.0, 4.0)


def _toy_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-100, 100, (12, 10, 8)).astype(np.float32)


def _write_toy(path: Path, seed: int) -> np.ndarray:
    array = _toy_array(seed)
    with open(path, "wb") as f:  # a file object: np.save adds no .npy to the name
        np.save(f, array)
    return array


def _read_toy(path: Path, name: str) -> list[Volume]:
    return [Volume(array=np.load(path), affine=np.diag([*TOY_SPACING, 1.0]), source="toy", modality="OCT", laterality="OD")]


@pytest.fixture
def toy_reader():
    """``.toyvol`` registered for the test's duration, the registry as it was afterwards."""
    readers.register_reader("toy", suffixes=(".toyvol",), description="toy volume", modality="OCT")(_read_toy)
    yield readers.get_reader("toy")
    del readers._READERS["toy"]


def test_registered_reader_reaches_convert_prep_preset_and_help(toy_reader, tmp_path, capsys):
    assert "toy" in readers.list_readers() and ".toyvol" in readers.suffix_list()
    assert ".toyvol" in build_parser().format_help()
    images = tmp_path / "images"
    images.mkdir()
    arrays = {f"s{k}": _write_toy(images / f"s{k}.toyvol", k) for k in range(3)}
    (images / "notes.txt").write_text("not a study")

    assert cli(["convert", str(images / "s0.toyvol"), str(tmp_path / "s0.nii.gz")]) == 0
    assert "toy volume" in capsys.readouterr().out
    written = nib.load(str(tmp_path / "s0.nii.gz"))
    np.testing.assert_allclose(written.header.get_zooms()[:3], TOY_SPACING)
    np.testing.assert_allclose(np.asarray(written.dataobj, np.float32), arrays["s0"], atol=1e-4)

    assert default_prep_preset(images)[0] == "oct"  # the entry's modality decides
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"study_id": s, "report": "Subretinal fluid."}) + "\n" for s in arrays))
    cfg = tmp_path / "p.yaml"
    cfg.write_text("modality: oct\nsteps:\n  - percentile_window: {}\n  - crop_or_pad: {spatial_size: [8, 8, 8]}\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(cfg), "--workers", "1"]) == 0
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert set(rows) == set(arrays)
    assert rows["s1"]["source_spacing"] == pytest.approx(list(TOY_SPACING))
    assert rows["s1"]["provenance"].startswith("toy volume")


def test_reader_from_another_package_entry_point(tmp_path):
    """A package that declares a ``medalign.readers`` entry point is read in a fresh process."""
    site = tmp_path / "site"
    (site / "toy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "toy_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (site / "toy_plugin-0.1.dist-info" / "entry_points.txt").write_text("[medalign.readers]\ntoy = toy_plugin\n")
    (site / "toy_plugin.py").write_text(
        "import numpy as np\nfrom medalign.io.readers import register_reader\nfrom medalign.io.volume import Volume\n\n"
        "@register_reader('toy', suffixes=('.toyvol',), description='toy volume')\n"
        "def read(path, name):\n    return [Volume(array=np.load(path), affine=np.diag([2.0, 3.0, 4.0, 1.0]))]\n")
    array = _write_toy(tmp_path / "a.toyvol", 5)
    env = {"PYTHONPATH": str(site), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "medalign.cli.main", "convert", str(tmp_path / "a.toyvol"), str(tmp_path / "a.nii")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.asarray(nib.load(str(tmp_path / "a.nii")).dataobj, np.float32), array, atol=1e-4)


def test_file_of_no_registered_format_is_refused_in_one_line(tmp_path):
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"\0" * 64)
    with pytest.raises(Exception, match=r"scan.xyz: not a file format medalign reads \(.nii, .nii.gz, .vol"):
        readers.read_volumes(odd)
