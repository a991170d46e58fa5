"""``medalign synth``: write a phantom data set (DICOM studies, reports CSV, labels CSV)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.uid import generate_uid

from medalign.errors import InputError
from medalign.io.atomic import atomic_write
from medalign.prep.splits import assign_split
from medalign.synth.ct import CT_FINDINGS, CTGrid, make_ct_case
from medalign.synth.dicom_writer import FakePatient, write_ct_series, write_oct_volume
from medalign.synth.oct import OCT_FINDINGS, OCT_SPACING, make_oct_case
from medalign.synth.reports import ct_report, oct_report


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """A CSV with ``header`` and ``rows``, written atomically."""
    def _write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    atomic_write(path, _write)


def write_lesion_masks(masks: dict[str, np.ndarray], grid: CTGrid, folder: Path) -> None:
    """Each drawn finding's ``(Z, Y, X)`` mask as ``folder/<finding>.nii.gz`` (spaces as ``_``) on the
    study's own scanner grid: the geometry ``medalign convert`` gives its DICOM series."""
    from medalign.io.volume import LPS_TO_RAS, Volume
    from medalign.io.nifti import save_nifti

    dz, dy, dx = grid.spacing
    lps = np.diag([dx, dy, dz, 1.0])
    lps[:3, 3] = grid.origin_lps()
    for finding, mask in masks.items():
        save_nifti(Volume(mask.transpose(2, 1, 0).astype(np.float32), LPS_TO_RAS @ lps), folder / f"{finding.replace(' ', '_')}.nii.gz")


def write_oct_lesion_masks(masks: dict[str, np.ndarray], volume: np.ndarray, study: Path, folder: Path) -> None:
    """Each drawn finding's ``(frames, rows, cols)`` mask as ``folder/<finding>.nii.gz`` on the grid
    ``medalign convert`` gives the study's OCT DICOM, read back from it (``volume`` is what was written:
    the read must return it, or the masks would not lie over the scan)."""
    from medalign.io.dicom import load_dicom_study
    from medalign.io.nifti import save_nifti
    from medalign.io.volume import SeriesSelection, Volume

    scan = load_dicom_study(study, SeriesSelection(modalities=["OPT"], planes=[]))[0]
    if not np.array_equal(scan.array, volume.transpose(2, 1, 0)):  # the reader's order, (cols, rows, frames)
        raise RuntimeError(f"{study}: the OCT reader no longer returns (cols, rows, frames); lesion masks would be misplaced")
    for finding, mask in masks.items():
        save_nifti(Volume(mask.transpose(2, 1, 0).astype(np.float32), scan.affine), folder / f"{finding.replace(' ', '_')}.nii.gz")


def synthesize(out: Path, modality: Literal["ct", "oct"] = "ct", studies: int = 300, seed: int = 0, localizer_fraction: float = 0.3) -> dict:
    """Write ``studies`` phantom studies under ``out/images/<study_id>/`` plus
    ``out/reports.csv`` (study_id, report, split) and ``out/labels.csv`` (ground truth, 0/1 per finding);
    ``out/lesions/<study_id>/<finding>.nii.gz`` says where each present finding was drawn, on the
    study's scanner grid.

    Returns a summary dict with the paths and finding prevalences.
    """
    out = Path(out)
    if (out / "images").is_dir() and any((out / "images").iterdir()):
        raise InputError(f"{out / 'images'}: already holds studies; synthesize into an empty folder")
    rng = np.random.default_rng(seed)
    findings = CT_FINDINGS if modality == "ct" else OCT_FINDINGS
    report_rows, label_rows = [], []
    for n in range(studies):
        study_id = f"{modality}{seed:02d}{n:05d}"
        folder = out / "images" / study_id
        patient = FakePatient.random(rng)
        study_uid = generate_uid()
        if modality == "ct":
            grid = CTGrid()
            case = make_ct_case(rng, grid)
            # some studies nest their files one level down, as PACS exports often do
            series_dir = folder / "DICOM" if rng.random() < 0.3 else folder
            write_ct_series(case.hu, grid.spacing, grid.origin_lps(), series_dir, patient, study_uid, rng, signed=bool(rng.random() < 0.5))
            if rng.random() < localizer_fraction:
                projection = case.hu.mean(axis=1)[::-1][None]  # coronal scout, one image (superior at top)
                dz, _, dx = grid.spacing
                ox, _, oz = grid.origin_lps()
                top = oz + (grid.shape[0] - 1) * dz
                write_ct_series(
                    projection, (1.0, dz, dx), (ox, 0.0, top), series_dir, patient, study_uid, rng,
                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), orientation=(1, 0, 0, 0, 0, -1),
                    series_number=1, description="SCOUT",
                )
            write_lesion_masks(case.masks, grid, out / "lesions" / study_id)
            report = ct_report(case.labels, case.details, rng)
            labels = case.labels
        else:
            case = make_oct_case(rng)
            write_oct_volume(case.volume, OCT_SPACING, folder / f"{rng.bytes(6).hex()}.dcm", patient, study_uid)
            write_oct_lesion_masks(case.masks, case.volume, folder, out / "lesions" / study_id)
            report = oct_report(case.labels, rng)
            labels = case.labels
        # the phantom's research split: one patient per study, drawn from the study id (a hospital's
        # own split column travels the same way; without one, prep draws it from the PatientID)
        report_rows.append([study_id, report, assign_split(study_id)])
        label_rows.append([study_id] + [labels[f] for f in findings])
    write_csv(out / "reports.csv", ["study_id", "report", "split"], report_rows)
    write_csv(out / "labels.csv", ["study_id", *findings], label_rows)
    prevalence = {f: float(np.mean([r[i + 1] for r in label_rows])) if label_rows else 0.0 for i, f in enumerate(findings)}
    return {"images": str(out / "images"), "reports": str(out / "reports.csv"), "labels": str(out / "labels.csv"), "studies": studies, "prevalence": prevalence}
