"""Heidelberg Spectralis .vol, a real file (tests/data/oct/heyex_valid.vol, MIT): geometry and eye
from the file, left eyes mirrored by the OCT presets, cut files named, header PHI never written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from medalign.cli.main import main as cli
from medalign.errors import InputError
from medalign.io.oct_vendor import load_heyex_vol

VOL = Path(__file__).parent / "data" / "oct" / "heyex_valid.vol"
SCAN_POSITION = slice(84, 88)  # HSF-OCT-103 header: ScanPosition, 4 bytes ("OD\0\0")
CONFIG = ("modality: oct\nvocab: oct\nmirror_left_eyes: true\nsteps:\n  - percentile_window: {lower: 1.0, upper: 99.5}\n"
          "  - resize: {spatial_size: [64, 32, 1]}\ncache_dtype: float32\n")


def test_the_real_vol_reads_with_the_files_geometry():
    vol = load_heyex_vol(VOL)
    assert vol.array.shape == (768, 496, 1) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing[:2], (0.01789099909, 0.00387166976), rtol=1e-6)  # ScaleX, ScaleZ of the header
    assert vol.info["laterality"] == "OD" and vol.info["scan_pattern"] == "circle"
    assert "one B-scan" in vol.info["geometry_note"]
    assert 0.0 <= vol.array.min() and vol.array.max() <= 1.0 and vol.array.std() > 0.05  # a real B-scan, not a blank
    assert vol.info["localizer"].shape == (768, 768)
    np.testing.assert_allclose(vol.info["localizer_spacing"], (0.0142372, 0.0142372), rtol=1e-5)


def test_convert_writes_the_volume_and_its_fundus_image(tmp_path):
    out = tmp_path / "eye.nii.gz"
    assert cli(["convert", str(VOL), str(out)]) == 0
    img = nib.load(out)
    assert img.shape == (768, 496, 1)
    np.testing.assert_allclose(np.diag(img.affine)[:2], (0.01789099909, 0.00387166976), rtol=1e-6)
    assert nib.load(tmp_path / "eye_localizer.nii.gz").shape == (768, 768, 1)


def test_prep_mirrors_left_eyes_and_writes_no_header_phi(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(VOL, images / "right.vol")
    left = bytearray(VOL.read_bytes())
    left[SCAN_POSITION] = b"OS\x00\x00"
    (images / "left").mkdir()
    (images / "left" / "scan.vol").write_bytes(bytes(left))
    cut = VOL.read_bytes()
    (images / "cut.vol").write_bytes(cut[: len(cut) // 2])
    reports = tmp_path / "r.jsonl"
    reports.write_text("".join(json.dumps({"study_id": s, "report": "Drusen. No subretinal fluid."}) + "\n" for s in ("right", "left", "cut")))
    (tmp_path / "p.yaml").write_text(CONFIG)
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(tmp_path / "p.yaml"),
                "--workers", "1"]) == 3
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert set(rows) == {"right", "left"}
    assert "mirrored" in rows["left"]["provenance"] and "OD" in rows["right"]["provenance"]
    right, left = np.load(out / rows["right"]["volume"]), np.load(out / rows["left"]["volume"])
    np.testing.assert_allclose(left, right[::-1], atol=1e-6)  # the same scan, mirrored along the lateral axis
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["study_id"] == "cut"
    assert errors[0]["reason"].startswith("cut.vol: unreadable Heidelberg .vol, cut short or damaged")
    # the header's birth date, visit date and internal ids never reach an output
    for f in out.rglob("*"):
        if f.is_file() and f.suffix != ".npy":
            data = f.read_bytes()
            for secret in (b"1938-07-31", b"1938", b"2011-11-09", b"50469", b"186565", b"847005"):
                assert secret not in data, (f, secret)


def test_a_file_that_is_not_a_vol_is_one_line(tmp_path):
    bad = tmp_path / "x.vol"
    bad.write_bytes(b"HSF-OCT-103\x00" + b"\x00" * 50)
    with pytest.raises(InputError, match="x.vol"):
        load_heyex_vol(bad)
