"""Fault injection for ``medalign prep``: each broken study is named with its reason, every good one is kept.

Each case starts from a real phantom study (pydicom-written DICOM) and breaks one thing the way
hospital exports break. One prep run over all of them must exit 3 (some failed), record each
failure in ``errors.jsonl`` with a one-line reason naming the file, and prepare the good studies.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from medalign.cli.main import main as cli


def _image_files(study: Path) -> list[Path]:
    """The CT slices of a phantom study (not its localizer), in a stable order."""
    out = []
    for f in sorted(study.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if "LOCALIZER" not in [str(v) for v in ds.get("ImageType", [])]:
            out.append(f)
    return out


def _by_position(files: list[Path]) -> list[Path]:
    return sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))


def _rewrite(files, change) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f, enforce_file_format=True)


def _truncate(f: Path, keep: float | int) -> None:
    b = f.read_bytes()
    f.write_bytes(b[: int(len(b) * keep)] if isinstance(keep, float) else b[:keep])


def _dicom_cases(study: Path) -> None:
    """Break ``study`` in place according to its folder name."""
    files = _image_files(study)
    name = study.name
    if name == "truncated_file":
        # cut inside the pixel data at a fixed count from the end (a share of the file would vary with the UIDs' lengths)
        _truncate(files[5], -(18_432 - 4_751))
    elif name == "truncated_pixel_data":
        _truncate(files[5], -1000)
    elif name == "junk_named_dcm":
        for f in study.rglob("*.dcm"):
            f.unlink()
        (study / "IMG0001.dcm").write_bytes(b"this is not DICOM " * 40)
    elif name == "dicomdir_and_sr_beside_images":
        shutil.copy(pydicom.data.get_testdata_file("DICOMDIR", download=False), study / "DICOMDIR")
        ref = pydicom.dcmread(files[0], stop_before_pixels=True)
        sr = pydicom.Dataset()
        sr.file_meta = pydicom.dataset.FileMetaDataset()
        sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
        sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID = generate_uid()
        sr.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        sr.Modality, sr.StudyInstanceUID, sr.SeriesInstanceUID = "SR", ref.StudyInstanceUID, generate_uid()
        sr.save_as(study / "report_sr.dcm", enforce_file_format=True)
    elif name == "rows_disagree":
        def shrink(ds):
            a = ds.pixel_array[:-2]
            ds.Rows, ds.PixelData = a.shape[0], a.tobytes()
        _rewrite(_by_position(files)[7:8], shrink)
    elif name == "orientation_disagrees":
        _rewrite(_by_position(files)[4:5], lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    elif name == "two_slices_one_position":
        ds = pydicom.dcmread(files[3])
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(files[3].parent / "copy_of_slice.dcm", enforce_file_format=True)
    elif name == "missing_slice":
        _by_position(files)[10].unlink()
    elif name == "pixel_data_absent":
        _rewrite(files, lambda ds: delattr(ds, "PixelData"))
    elif name == "unsupported_transfer_syntax":
        def mpeg2(ds):
            ds.PixelData = encapsulate([ds.PixelData])
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pixel-data plugin decodes it
        _rewrite(files, mpeg2)
    elif name == "absurd_dimensions":
        _rewrite(files, lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000)))


DICOM_CASES = {
    # case: substring the errors.jsonl reason must contain (None: the study must be prepared)
    "good": None,
    "dicomdir_and_sr_beside_images": None,
    "truncated_file": "truncated: 4,751 of 18,432 pixel bytes",
    "truncated_pixel_data": "truncated: 17,432 of 18,432 pixel bytes",
    "junk_named_dcm": "no DICOM image files",
    # a slice of another size or orientation is set apart (as dcm2niix splits it), leaving a gap
    "rows_disagree": "uneven slice spacing (steps 7.50-15.00 mm, median 7.50): missing slices?; 1 file of this series set apart",
    "orientation_disagrees": "1 file of this series set apart for another orientation or size",
    "two_slices_one_position": "two slices at one position",
    "missing_slice": "uneven slice spacing",
    "pixel_data_absent": "no pixel data",
    "unsupported_transfer_syntax": "MPEG2",
    "absurd_dimensions": "absurd dimensions 60000x60000",
    "empty_study_folder": "empty study folder",
}


def _nifti_cases(folder: Path, good: np.ndarray) -> dict[str, str | None]:
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    cases = {}

    def save(name, data, aff=affine):
        img = nib.Nifti1Image(data, None)
        img.header.set_sform(aff, code=1)  # sform only: nibabel cannot write a singular affine as qform
        nib.save(img, folder / f"{name}.nii.gz")

    save("nii_good", good)
    cases["nii_good"] = None
    (folder / "nii_wrong_magic.nii").write_bytes(b"\x00" * 400)
    cases["nii_wrong_magic"] = "nii_wrong_magic.nii"
    save("nii_truncated_gzip", good)
    _truncate(folder / "nii_truncated_gzip.nii.gz", 0.5)
    cases["nii_truncated_gzip"] = "nii_truncated_gzip.nii.gz"
    save("nii_2d", good[:, :, 0])
    cases["nii_2d"] = "3D"
    save("nii_4d", np.stack([good, good], -1))
    cases["nii_4d"] = "3D"
    bad = good.copy()
    bad[10:20, 10:20, 5] = np.nan
    bad[0, 0, 0] = np.inf
    save("nii_nan_inf", bad)
    cases["nii_nan_inf"] = "NaN"
    save("nii_singular_affine", good, np.diag([1.5, 0.0, 3.0, 1.0]))
    cases["nii_singular_affine"] = "affine"
    return cases


@pytest.fixture(scope="module")
def broken_export(phantom_ct, tmp_path_factory):
    """A PACS-like export: the DICOM and NIfTI cases above beside good studies, and their reports."""
    root = tmp_path_factory.mktemp("faults")
    images = root / "images"
    images.mkdir()
    reports = {r["study_id"]: r["report"] for r in csv.DictReader(open(phantom_ct / "reports.csv", encoding="utf-8"))}
    sources = sorted(reports)
    expected = {}
    for i, case in enumerate(DICOM_CASES):
        if case == "empty_study_folder":
            (images / case).mkdir()
        else:
            shutil.copytree(phantom_ct / "images" / sources[i], images / case)
            _dicom_cases(images / case)
        expected[case] = DICOM_CASES[case]
    rng = np.random.default_rng(0)
    good = (rng.normal(0, 50, size=(64, 64, 40)) - 500).astype(np.float32)
    good[16:48, 16:48, 8:32] = 40.0  # a soft-tissue block, so the windowed volume is not constant
    expected.update(_nifti_cases(images, good))
    with open(root / "reports.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "report"])
        for k, case in enumerate(expected):
            w.writerow([case, list(reports.values())[k]])
    return root, expected


@pytest.fixture(scope="module")
def prepared_broken(broken_export):
    root, expected = broken_export
    out = root / "ds"
    code = cli(["prep", "--images", str(root / "images"), "--reports", str(root / "reports.csv"), "--out", str(out), "--config", "demo_ct", "--workers", "2"])
    errors = {e["study_id"]: e for e in map(json.loads, (out / "errors.jsonl").read_text(encoding="utf-8").splitlines())}
    return out, code, errors, expected


def test_every_good_study_is_kept(prepared_broken):
    out, code, errors, expected = prepared_broken
    assert code == 3  # some failed, the rest is done
    kept = set(pq.read_table(out / "manifest.parquet").column("study_id").to_pylist())
    assert kept == {case for case, reason in expected.items() if reason is None}


@pytest.mark.parametrize("case", [c for c, r in {**DICOM_CASES}.items() if r is not None] + [
    "nii_wrong_magic", "nii_truncated_gzip", "nii_2d", "nii_4d", "nii_nan_inf", "nii_singular_affine"])
def test_each_broken_study_is_named_with_its_reason(prepared_broken, case):
    out, code, errors, expected = prepared_broken
    assert case in errors, f"{case} was not recorded as a failure"
    reason = errors[case]["reason"]
    assert "\n" not in reason and len(reason) < 400
    assert expected[case] in reason, reason
    # nothing half-written for a failed study
    assert not any(p.name.startswith(case) for p in (out / "volumes").rglob("*")) if (out / "volumes").is_dir() else True
