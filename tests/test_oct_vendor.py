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
from medalign.io.oct_heidelberg import load_heyex_vol

VOL = Path(__file__).parent / "data" / "oct" / "heyex_valid.vol"
SCAN_POSITION = slice(84, 88)  # HSF-OCT-103 header: ScanPosition, 4 bytes ("OD\0\0")
CONFIG = ("modality: oct\nvocab: oct\nmirror_left_eyes: true\nsteps:\n  - percentile_window: {lower: 1.0, upper: 99.5}\n"
          "  - resize: {spatial_size: [64, 32, 1]}\ncache_dtype: float32\n")


def test_the_real_vol_reads_with_the_files_geometry():
    vol = load_heyex_vol(VOL)
    assert vol.array.shape == (768, 496, 1) and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing[:2], (0.01789099909, 0.00387166976), rtol=1e-6)  # ScaleX, ScaleZ of the header
    assert vol.laterality == "OD" and vol.scan_pattern == "circle"
    assert "one B-scan" in vol.geometry_note
    assert 0.0 <= vol.array.min() and vol.array.max() <= 1.0 and vol.array.std() > 0.05  # a real B-scan, not a blank
    assert vol.localizer.shape == (768, 768)
    np.testing.assert_allclose(vol.localizer_spacing, (0.0142372, 0.0142372), rtol=1e-5)


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
    # the SLO fundus image is kept beside the volume as an optional second input, mirrored with its eye
    from medalign.prep.manifest import read_manifest

    manifest = read_manifest(out)
    paths = {sid: manifest.fundus_path(i) for i, sid in enumerate(manifest.columns["study_id"])}
    assert paths["right"] == out / "volumes" / "right.fundus.npy"
    fundus_right, fundus_left = np.load(paths["right"]), np.load(paths["left"])
    slo = load_heyex_vol(VOL).localizer
    assert fundus_right.shape == slo.shape == (768, 768) and fundus_right.dtype == np.float16
    np.testing.assert_allclose(fundus_right, slo / 255.0, atol=1e-3)
    np.testing.assert_array_equal(fundus_left, fundus_right[:, ::-1])
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


# Heidelberg .e2e: no real file can be shipped, so the tests write them with eyepy's own description
# of the format (construct structures that build as well as parse) and check what medalign makes of them
PATIENT = {"firstname": "Jane", "surname": "Doe-Testpatient", "patient_id": "MRN-7731-X", "birthdate": 2415021}
UM_PER_DEGREE = 289.6  # eyepy's standard eye: what an E2E file's angles are converted with


def _scan(rng, n: int, laterality: str = "OS", pattern: int = 3, field=(20.0, 15.0)) -> dict:
    from e2e_files import encodable

    return {"bscans": encodable(rng.uniform(0.001, 0.5, (n, 40, 48)).astype(np.float32)), "laterality": laterality,
            "scale_y": 0.0039, "field_deg": field, "scan_pattern": pattern, "localizer": rng.integers(0, 255, (32, 32)).astype(np.uint8)}


def test_e2e_scans_read_with_geometry_eye_and_pixels(tmp_path):
    from e2e_files import write_e2e

    from medalign.io.readers import read_volumes

    rng = np.random.default_rng(0)
    volume_scan, line_scan = _scan(rng, 5), _scan(rng, 1, pattern=1)
    write_e2e(tmp_path / "eye.e2e", [volume_scan, line_scan], PATIENT)
    volumes = read_volumes(tmp_path / "eye.e2e")
    assert [v.array.shape for v in volumes] == [(48, 40, 5), (48, 40, 1)]
    vol = volumes[0]
    for i in range(5):  # each B-scan as written, laid out (A-scans, depth)
        np.testing.assert_array_equal(vol.array[:, :, i], volume_scan["bscans"][i].T)
    dx = 20.0 / 48 * UM_PER_DEGREE / 1000  # 20 degrees over 48 A-scans
    dy = 15.0 / 4 * UM_PER_DEGREE / 1000  # 5 B-scans over 15 degrees
    np.testing.assert_allclose(vol.spacing, (dx, 0.0039, dy), rtol=1e-6)
    assert vol.laterality == "OS" and vol.scan_pattern == "volume"
    assert "standard eye" in vol.geometry_note and vol.localizer.shape == (32, 32)
    assert volumes[1].scan_pattern == "line" and "one B-scan" in volumes[1].geometry_note


@pytest.mark.parametrize("select", ["best", "all"])
def test_prep_reads_e2e_files_under_the_series_policy_and_writes_no_phi(tmp_path, select):
    from e2e_files import write_e2e

    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    images.mkdir()
    write_e2e(images / "left.e2e", [_scan(rng, 1, pattern=1), _scan(rng, 5)], PATIENT)
    write_e2e(images / "right.E2E", [_scan(rng, 5, laterality="OD")], PATIENT)
    write_e2e(images / "both.e2e", [_scan(rng, 5, laterality="OD"), _scan(rng, 5, laterality="OS")], PATIENT)
    write_e2e(images / "star.e2e", [_scan(rng, 6, pattern=5)], PATIENT)
    whole = (images / "right.E2E").read_bytes()
    (images / "cut.e2e").write_bytes(whole[: len(whole) * 2 // 3])
    ids = ("left", "right", "both", "star", "cut")
    reports = tmp_path / "r.jsonl"
    reports.write_text("".join(json.dumps({"study_id": s, "report": "Drusen. No subretinal fluid."}) + "\n" for s in ids))
    (tmp_path / "p.yaml").write_text(CONFIG + f"series: {{select: {select}}}\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(tmp_path / "p.yaml"),
                "--workers", "1"]) == 3
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    left = [r for r in rows if r["study_id"] == "left"]
    assert sorted({r["study_id"] for r in rows}) == ["left", "right"]
    if select == "best":
        assert len(left) == 1 and "volume scan, 5 B-scans" in left[0]["provenance"] and "the most B-scans" in left[0]["provenance"]
    else:
        provenance = sorted(r["provenance"] for r in left)
        assert len(left) == 2 and "1 B-scans of 48 A-scans x 40" in provenance[0] and "scan 1 of 2 in the file" in provenance[0]
        assert "5 B-scans of 48 A-scans x 40" in provenance[1] and "scan 2 of 2 in the file" in provenance[1]
    assert all("mirrored" in r["provenance"] for r in left) and "OD" in next(r for r in rows if r["study_id"] == "right")["provenance"]
    errors = {e["study_id"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"both", "star", "cut"}
    assert errors["both"].startswith("both.e2e: scans of both eyes")
    assert errors["star"].startswith("star.e2e: a star scan")
    assert errors["cut"].startswith("cut.e2e: unreadable Heidelberg .e2e, cut short or damaged")
    for f in out.rglob("*"):  # the file's patient block (names, PatientID, birth date) never reaches an output
        if f.is_file() and f.suffix != ".npy":
            data = f.read_bytes()
            for secret in (b"Jane", b"Doe-Testpatient", b"MRN-7731-X", b"2415021"):
                assert secret not in data, (f, secret)


def test_convert_and_the_default_preset_know_e2e(tmp_path, capsys):
    from e2e_files import write_e2e

    from medalign.prep.presets import default_prep_preset

    rng = np.random.default_rng(2)
    write_e2e(tmp_path / "eye.e2e", [_scan(rng, 1, pattern=1), _scan(rng, 5)], PATIENT)
    out = tmp_path / "eye.nii.gz"
    assert cli(["convert", str(tmp_path / "eye.e2e"), str(out)]) == 0
    img = nib.load(out)
    assert img.shape == (48, 40, 5)
    np.testing.assert_allclose(np.diag(img.affine)[:3], (20.0 / 48 * UM_PER_DEGREE / 1000, 0.0039, 15.0 / 4 * UM_PER_DEGREE / 1000),
                               rtol=1e-5)
    assert "scan 2 of 2 in the file, the most B-scans" in capsys.readouterr().out
    assert default_prep_preset(tmp_path)[0] == "oct"
