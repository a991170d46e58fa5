"""Topcon .fda/.fds and Zeiss Cirrus .img. No real file of either can be shipped: Topcon files are
written with oct-converter's own structures (tests/topcon_files.py) and read back against
oct-converter's own readers; Cirrus files are headerless pixels under a Cirrus export name."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from topcon_files import write_topcon

from medalign.cli.main import main as cli
from medalign.errors import InputError
from medalign.io.readers import read_volumes, reader_for

PATIENT = {"patient_id": "MRN-5521-T", "first_name": "Johanna", "last_name": "Topconpatient", "birth_date": [1941, 2, 3]}
CONFIG = ("modality: oct\nvocab: oct\nmirror_left_eyes: true\nsteps:\n  - percentile_window: {lower: 1.0, upper: 99.5}\n"
          "  - resize: {spatial_size: [32, 20, 4]}\ncache_dtype: float32\n")
CIRRUS = "P7744123_Macular Cube 512x128_10-21-2019_14-33-07_{eye}_sn88231_cube_z.img"


def _bscans(rng, dtype, n: int = 4, depth: int = 40, width: int = 32) -> np.ndarray:
    return rng.integers(0, np.iinfo(dtype).max, (n, depth, width)).astype(dtype)


def _oct_converter_reading(path: Path, monkeypatch):
    """oct-converter's own FDA/FDS reader on ``path``. Its chunk walk uses ``np.fromstring``'s binary
    mode, which NumPy 2.3 removed; for this reference reading only, it gets ``np.frombuffer`` back."""
    from oct_converter.readers import FDA, FDS

    monkeypatch.setattr(np, "fromstring", lambda b, dtype: np.frombuffer(b, dtype=dtype), raising=False)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints on a missing optional chunk
        reader = (FDS if path.suffix == ".fds" else FDA)(path)
        scan = reader.read_oct_volume()
        fundus = reader.read_fundus_image()
    return scan, fundus


@pytest.mark.parametrize("kind", ["fda-jpeg2000", "fda-raw", "fds-raw"])
def test_topcon_files_read_as_oct_converter_reads_them(tmp_path, monkeypatch, kind):
    rng = np.random.default_rng(3)
    suffix, pixels = kind.split("-")
    dtype = np.uint8 if pixels == "jpeg2000" else np.uint16
    bscans = _bscans(rng, dtype)
    fundus = rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)
    path = tmp_path / f"scan.{suffix}"
    write_topcon(path, bscans, eye=1, size_mm=(6.0, 7.0), z_um=2.6, patient=PATIENT, pixels=pixels, fundus=fundus, box=(10, 12, 42, 40))
    (vol,) = read_volumes(path)
    scan, reference_fundus = _oct_converter_reading(path, monkeypatch)
    reference = np.stack(scan.volume, axis=-1).transpose(1, 0, 2)  # its B-scans (depth, A-scans), laid out as ours
    top = np.iinfo(dtype).max
    np.testing.assert_array_equal(np.rint(vol.array * top), reference)  # the same pixel values, scaled to [0, 1]
    np.testing.assert_array_equal(np.rint(vol.array[:, :, 2] * top), bscans[2].T)  # and as written
    width_mm, height_mm, axial_mm = scan.pixel_spacing  # oct-converter's order: A-scan, B-scan, axial
    np.testing.assert_allclose(vol.spacing, (width_mm, axial_mm, height_mm))
    np.testing.assert_allclose(vol.spacing, (6.0 / 32, 0.0026, 7.0 / 4))
    assert scan.laterality == "L" and vol.laterality == "OS" and vol.scan_pattern == "volume"
    np.testing.assert_allclose(vol.localizer, np.asarray(reference_fundus.image, np.float32).mean(-1) / 255, atol=1e-6)
    np.testing.assert_allclose(vol.localizer_spacing, (6.0 / 32, 7.0 / 28))  # scan size over its box on the fundus


def test_topcon_files_that_are_not_volumes_are_one_line(tmp_path):
    rng = np.random.default_rng(4)
    write_topcon(tmp_path / "radial.fds", _bscans(rng, np.uint16), pixels="raw", scan_mode=3)
    write_topcon(tmp_path / "cylinder.fda", _bscans(rng, np.uint8), scan_mode=3)
    whole = (tmp_path / "cylinder.fda").read_bytes()
    (tmp_path / "cut.fda").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "foreign.fds").write_bytes(b"NOTTOPCON" + bytes(64))
    reasons = {}
    for name in ("radial.fds", "cylinder.fda", "cut.fda", "foreign.fds"):
        with pytest.raises(InputError) as e:
            read_volumes(tmp_path / name)
        reasons[name] = str(e.value)
        assert "\n" not in reasons[name] and reasons[name].startswith(name)
    assert "radial scan's B-scans do not stack" in reasons["radial.fds"]
    assert "cylindrical scan's B-scans do not stack" in reasons["cylinder.fda"]
    assert "cut short" in reasons["cut.fda"] and "not a Topcon file" in reasons["foreign.fds"]


def _cirrus(path: Path, rng, width: int = 512, n: int = 128) -> np.ndarray:
    """A Cirrus cube as the instrument writes it: 8-bit, A-scan by A-scan (1024 samples each), B-scan by B-scan."""
    cube = rng.integers(0, 255, (n, width, 1024), dtype=np.uint8)
    path.write_bytes(cube.tobytes())
    return cube


def test_zeiss_cirrus_cube_reads_with_its_protocols_geometry(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / CIRRUS.format(eye="OS")
    cube = _cirrus(path, rng)
    (vol,) = read_volumes(path)
    assert vol.array.shape == (512, 1024, 128)  # (A-scans, depth, B-scans)
    np.testing.assert_array_equal(np.rint(vol.array[:, :, 7] * 255), cube[7])
    np.testing.assert_allclose(vol.spacing, (6.0 / 512, 2.0 / 1024, 6.0 / 128))  # Cirrus 6 x 6 mm cube, 2 mm deep
    assert vol.laterality == "OS" and "macular cube 512x128" in vol.geometry_note
    wrong = tmp_path / "P1_Macular Cube 200x200_1-2-2020_1-2-3_OD_sn1_cube_z.img"
    wrong.write_bytes(path.read_bytes())  # a 512x128 cube under a 200x200 name
    with pytest.raises(InputError, match="cut short or another protocol"):
        read_volumes(wrong)
    unnamed = tmp_path / "scan.img"
    unnamed.write_bytes(b"\x00" * 1024)
    with pytest.raises(InputError, match="names no Cirrus cube protocol"):
        read_volumes(unnamed)
    (tmp_path / "brain.img").write_bytes(b"\x00" * 64)  # half of an Analyze pair: nibabel's, not Zeiss's
    (tmp_path / "brain.hdr").write_bytes(b"\x00" * 348)
    assert not reader_for(tmp_path / "brain.img") and reader_for(unnamed) is not None


def test_prep_reads_topcon_and_zeiss_files_and_writes_no_phi(tmp_path):
    rng = np.random.default_rng(6)
    images = tmp_path / "images"
    images.mkdir()
    fundus = rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)
    write_topcon(images / "left.fda", _bscans(rng, np.uint8), eye=1, patient=PATIENT, fundus=fundus)
    write_topcon(images / "right.fds", _bscans(rng, np.uint16), eye=0, patient=PATIENT, pixels="raw")
    write_topcon(images / "radial.fds", _bscans(rng, np.uint16), patient=PATIENT, pixels="raw", scan_mode=3)
    cirrus = CIRRUS.format(eye="OD")
    _cirrus(images / cirrus, rng)
    ids = ("left", "right", "radial", cirrus[: -len(".img")])
    reports = tmp_path / "r.jsonl"
    reports.write_text("".join(json.dumps({"study_id": s, "report": "Drusen. No subretinal fluid."}) + "\n" for s in ids))
    (tmp_path / "p.yaml").write_text(CONFIG)
    out = tmp_path / "ds"
    args = ["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(tmp_path / "p.yaml"),
            "--workers", "1"]
    assert cli(args) == 2 and not (out / "manifest.parquet").exists()  # Cirrus names carry the patient id and scan date: refused without --hash-ids
    key = tmp_path / "key"
    key.write_bytes(b"a-secret-of-the-hospital-0123456789")
    assert cli(args + ["--hash-ids", str(key)]) == 3
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 3
    provenance = sorted(r["provenance"] for r in rows)
    assert provenance[0].startswith("Topcon .fda, volume scan, 4 B-scans of 32 A-scans x 40") and "mirrored" in provenance[0]
    assert provenance[1].startswith("Topcon .fds, volume scan") and provenance[1].endswith("; OD")
    assert provenance[2].startswith("Zeiss .img, volume scan, 128 B-scans of 512 A-scans x 1024") and "Zeiss's specification" in provenance[2]
    assert sum(bool(r["fundus"]) for r in rows) == 1
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and "radial scan's B-scans do not stack" in errors[0]["reason"]
    for f in out.rglob("*"):  # Topcon's patient block and Cirrus's file name never reach an output
        if f.is_file() and f.suffix != ".npy":
            data = f.read_bytes()
            for secret in (b"Johanna", b"Topconpatient", b"MRN-5521-T", b"P7744123", b"10-21-2019", b"sn88231"):
                assert secret not in data, (f, secret)


def test_convert_writes_a_topcon_scan_and_its_fundus_with_the_files_pixel_size(tmp_path, capsys):
    rng = np.random.default_rng(7)
    write_topcon(tmp_path / "eye.fda", _bscans(rng, np.uint8), eye=0, size_mm=(6.0, 6.0), fundus=rng.integers(0, 255, (48, 64, 3)).astype(np.uint8),
                 box=(10, 12, 42, 36))
    out = tmp_path / "eye.nii.gz"
    assert cli(["convert", str(tmp_path / "eye.fda"), str(out)]) == 0
    img = nib.load(out)
    assert img.shape == (32, 40, 4)
    np.testing.assert_allclose(np.diag(img.affine)[:3], (6.0 / 32, 0.0026, 6.0 / 4), rtol=1e-6)
    fundus = nib.load(tmp_path / "eye_localizer.nii.gz")
    assert fundus.shape == (64, 48, 1)
    np.testing.assert_allclose(np.diag(fundus.affine)[:2], (6.0 / 32, 6.0 / 24), rtol=1e-6)
    printed = capsys.readouterr().out
    assert "Topcon .fda, volume scan" in printed and "eye OD" in printed and "pixel size unknown" not in printed
