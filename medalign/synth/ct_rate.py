"""``medalign synth --layout ct-rate``: phantom chest CTs written as CT-RATE publishes its data set
(:mod:`medalign.io.ct_rate`), with CT-RATE's traps built in: stored values are HU + 1024 (the metadata
CSV's RescaleIntercept -1024 undoes it) and the NIfTI headers give a wrong voxel size (the metadata CSV
gives the right one). ``truth/<VolumeName>`` holds each volume in true HU on its true grid: what
``prep --layout ct-rate`` must read the tree as."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_write
from medalign.io.ct_rate import SPLIT_FILES
from medalign.io.nifti import save_nifti
from medalign.io.volume import LPS_TO_RAS, Volume
from medalign.synth.ct import CTGrid, make_ct_case
from medalign.synth.reports import ct_report
from medalign.synth.writer import write_csv

#: CT-RATE's 18 label columns, in the released files' order
CT_RATE_LABELS = ("Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
                  "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis", "Lung nodule",
                  "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion", "Mosaic attenuation pattern", "Peribronchial thickening",
                  "Consolidation", "Bronchiectasis", "Interlobular septal thickening")
#: the header's voxel size in every phantom file: deliberately not the true one
WRONG_HEADER_SPACING = (1.0, 1.0, 1.0)


def _nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    atomic_write(path, lambda tmp: (nib.save(img, str(tmp) + ".nii.gz"), Path(str(tmp) + ".nii.gz").replace(tmp)))


def synthesize_ct_rate(out: Path, studies: int = 12, seed: int = 0, valid_fraction: float = 0.25) -> dict:
    """Write ``studies`` phantom scans as ``out/dataset/`` in CT-RATE's layout (two reconstructions each;
    every third patient has a second scan), with metadata, reports and label CSVs, and ``out/truth/``."""
    out = Path(out)
    root = out / "dataset"
    if root.is_dir() and any(root.iterdir()):
        raise InputError(f"{root}: already holds a data set; synthesize into an empty folder")
    rng = np.random.default_rng(seed)
    grid = CTGrid()
    dz, dy, dx = grid.spacing
    true_lps = np.diag([dx, dy, dz, 1.0])
    true_lps[:3, 3] = grid.origin_lps()
    true_affine = LPS_TO_RAS @ true_lps
    header_affine = true_affine.copy()
    header_affine[:3, :3] = true_affine[:3, :3] / np.array([dx, dy, dz]) * np.array(WRONG_HEADER_SPACING)
    rows = {"train": ([], [], []), "valid": ([], [], [])}  # metadata, reports, labels
    patients = {"train": 0, "valid": 0}
    split, scan = "train", "a"
    for n in range(studies):
        if n % 3 == 1:  # a second scan of the previous patient
            scan = "b"
        else:  # every patient's split from its number: each ``1 / valid_fraction``-th patient is a valid one
            new_patient = sum(patients.values())
            split = "valid" if (new_patient + 1) % max(1, round(1 / valid_fraction)) == 0 else "train"
            patients[split] += 1
            scan = "a"
        case = make_ct_case(rng, grid)
        report = ct_report(case.labels, case.details, rng)
        findings, _, impression = report.partition("\n\nIMPRESSION:")
        hu = case.hu.transpose(2, 1, 0).astype(np.float32)  # (Z, Y, X) -> (X, Y, Z)
        for recon in (1, 2):
            name = f"{split}_{patients[split]}_{scan}_{recon}.nii.gz"
            folder = root / split / f"{split}_{patients[split]}" / f"{split}_{patients[split]}_{scan}"
            _nifti(np.round(hu + 1024).astype(np.int16), header_affine, folder / name)
            save_nifti(Volume(hu, true_affine), out / "truth" / name)
            meta, reports, labels = rows[split]
            meta.append([name, f"[{dy}, {dx}]", dz, 1, -1024])
            reports.append([name, "Not given.", "Non-contrast chest CT.", findings.removeprefix("FINDINGS:").strip(), impression.strip()])
            labels.append([name, *(case.labels.get(f.lower(), 0) for f in CT_RATE_LABELS)])
    for split, (meta_name, report_name, label_name) in SPLIT_FILES.items():
        meta, reports, labels = rows[split]
        write_csv(root / meta_name, ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"], meta)
        write_csv(root / report_name, ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"], reports)
        write_csv(root / label_name, ["VolumeName", *CT_RATE_LABELS], labels)
    return {"images": str(root), "truth": str(out / "truth"), "studies": studies, "volumes": 2 * studies}
