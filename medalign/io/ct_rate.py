"""CT-RATE's published tree (Hamamci et al. 2024, the Hugging Face ``dataset/`` folder), read as it is.

::

    ROOT/train/train_<P>/train_<P>_<scan>/train_<P>_<scan>_<recon>.nii.gz     (valid/ alike)
    ROOT/metadata/{train,validation}_metadata.csv        VolumeName, XYSpacing "[0.75, 0.75]", ZSpacing,
                                                         RescaleSlope, RescaleIntercept, ...
    ROOT/radiology_text_reports/{train,validation}_reports.csv
                                                         VolumeName, ClinicalInformation_EN, Technique_EN,
                                                         Findings_EN, Impressions_EN
    ROOT/multi_abnormality_labels/{train,valid}_predicted_labels.csv    VolumeName + 18 findings (0/1)

What was checked against CT-CLIP's own preprocessing (``data_preprocess/preprocess_ctrate_{train,valid}.py``):
the stored values are not HU (HU = RescaleSlope * value + RescaleIntercept from the metadata CSV, after
nibabel's own header scaling, as their ``get_fdata()`` gives it); the voxel size comes from the CSV
(``XYSpacing``, a string holding a list, and ``ZSpacing``), not from the header; ``VolumeName`` is the
file name. Unlike their script, which transposes the array without looking at the header, medalign
keeps the header's axis directions and origin and only replaces the voxel size.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.tables import read_table
from medalign.io.volume import Volume

#: ``<split>_<patient>_<scan>_<reconstruction>.nii.gz``
VOLUME_NAME = re.compile(r"^(train|valid)_(\d+)_([a-z]+)_(\d+)\.nii(?:\.gz)?$")
#: the metadata, report and label files of each of CT-RATE's two splits
SPLIT_FILES = {
    "train": ("metadata/train_metadata.csv", "radiology_text_reports/train_reports.csv", "multi_abnormality_labels/train_predicted_labels.csv"),
    "valid": ("metadata/validation_metadata.csv", "radiology_text_reports/validation_reports.csv",
              "multi_abnormality_labels/valid_predicted_labels.csv"),
}
#: report columns of CT-RATE's reports CSV, by section name
REPORT_COLUMNS = {"clinical_information": "ClinicalInformation_EN", "technique": "Technique_EN", "findings": "Findings_EN",
                  "impression": "Impressions_EN"}


@dataclasses.dataclass(frozen=True)
class VolumeNameParts:
    """What a CT-RATE file name says: split (``train``/``valid``), patient, scan and reconstruction."""

    split: str
    patient: str
    scan: str
    reconstruction: int

    @property
    def study_id(self) -> str:
        """The scan's id (``valid_4_a``): its reconstructions are volumes of one study."""
        return f"{self.split}_{self.patient}_{self.scan}"

    @property
    def patient_id(self) -> str:
        """The patient's id within its split (``valid_4``): CT-RATE numbers patients per split."""
        return f"{self.split}_{self.patient}"


def parse_volume_name(name: str) -> VolumeNameParts | None:
    """The parts of a CT-RATE ``VolumeName`` (``valid_4_a_2.nii.gz``), or None for any other name."""
    m = VOLUME_NAME.match(name)
    return VolumeNameParts(m.group(1), m.group(2), m.group(3), int(m.group(4))) if m else None


def label_keys(volume_name: str) -> list[str]:
    """The study ids a labels file's ``VolumeName`` stands for: the name without ``.nii[.gz]``
    (``valid_4_a_1``, a study per file) and, for a CT-RATE name, its scan (``valid_4_a``, the study
    ``--layout ct-rate`` makes of it; the first reconstruction of a scan gives the scan's labels)."""
    name = volume_name.strip()
    keys = [name.removesuffix(".gz").removesuffix(".nii")]
    parts = parse_volume_name(name if name.endswith((".nii", ".nii.gz")) else name + ".nii.gz")
    if parts is not None:
        keys.append(parts.study_id)
    return keys


@dataclasses.dataclass(frozen=True)
class VolumeGeometry:
    """One metadata row: voxel size in mm (x = along a row, y = down a column, z = between slices) and rescale."""

    spacing: tuple[float, float, float]
    slope: float
    intercept: float


def _number(row: dict, column: str, where: str) -> float:
    try:
        value = float(row[column])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: {column} {row.get(column)!r} is not a number") from None
    if not np.isfinite(value):
        raise InputError(f"{where}: {column} is not finite")
    return value


def _pixel_spacing(text: str, where: str) -> tuple[float, float]:
    """``XYSpacing`` as written (``"[0.75, 0.75]"``, DICOM PixelSpacing: row step, then column step)."""
    try:
        values = [float(v) for v in ast.literal_eval(str(text).strip())]
    except (ValueError, SyntaxError, TypeError):
        raise InputError(f"{where}: XYSpacing {text!r} is not a list of two numbers") from None
    if len(values) != 2 or min(values) <= 0:
        raise InputError(f"{where}: XYSpacing {text!r} is not two positive numbers")
    return values[0], values[1]


@functools.lru_cache(maxsize=4)
def read_metadata(root: Path) -> dict[str, VolumeGeometry]:
    """``{VolumeName: geometry}`` from both splits' metadata CSVs under ``root`` (read once per process)."""
    out: dict[str, VolumeGeometry] = {}
    for split, (meta, _, _) in SPLIT_FILES.items():
        path = Path(root) / meta
        if not path.is_file():
            continue
        _, rows = read_table(path)
        for line, row in enumerate(rows, start=2):
            where = f"{path}:{line}"
            name = (row.get("VolumeName") or "").strip()
            if not name:
                raise InputError(f"{where}: empty VolumeName")
            row_step, column_step = _pixel_spacing(row.get("XYSpacing", ""), where)
            z = _number(row, "ZSpacing", where)
            if z <= 0:
                raise InputError(f"{where}: ZSpacing {z} is not positive")
            out[name] = VolumeGeometry((column_step, row_step, z), _number(row, "RescaleSlope", where), _number(row, "RescaleIntercept", where))
    if not out:
        raise InputError(f"{root}: no CT-RATE metadata ({SPLIT_FILES['train'][0]} or {SPLIT_FILES['valid'][0]})")
    return out


def load_ct_rate_volume(path: Path, geometry: VolumeGeometry) -> Volume:
    """A CT-RATE NIfTI in HU (``slope * value + intercept``) with the metadata's voxel size along the
    header's axis directions (its origin kept) as a :class:`Volume` ``(X, Y, Z)``."""
    from medalign.io.nifti import open_nifti

    path = Path(path)
    try:
        img = open_nifti(path)
        data = np.asanyarray(img.dataobj)  # the header's own scaling applied (as get_fdata), stored dtype kept when it has none
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(f"{path.name}: unreadable NIfTI ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if data.ndim != 3:
        raise InputError(f"{path.name}: expected a 3D volume, got shape {data.shape}")
    affine = np.asarray(img.affine, dtype=float)
    lengths = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(lengths < 1e-9):
        raise InputError(f"{path.name}: singular affine")
    fixed = affine.copy()
    fixed[:3, :3] = affine[:3, :3] / lengths * np.asarray(geometry.spacing)  # directions from the header, sizes from the CSV
    array = np.empty(data.shape, np.float32, order="F" if data.flags.f_contiguous else "C")
    np.multiply(data, np.float32(geometry.slope), out=array, casting="unsafe")  # one pass to float32 HU, no float64 copy
    array += np.float32(geometry.intercept)
    if not np.isfinite(array).all():
        raise InputError(f"{path.name}: volume holds NaN or infinite values")
    return Volume(array=array, affine=fixed, source="ct-rate", modality="CT")


def read_reports(root: Path, sections: list[str]) -> dict[str, str]:
    """``{VolumeName: report}``: the named sections (keys of :data:`REPORT_COLUMNS`) of each row of
    both splits' reports CSVs, as ``Findings: ... Impressions: ...`` (the labeler reads the headings)."""
    unknown = sorted(set(sections) - set(REPORT_COLUMNS))
    if unknown:
        raise InputError(f"report sections {', '.join(unknown)} are not among {', '.join(REPORT_COLUMNS)}")
    heading = {"clinical_information": "Clinical information", "technique": "Technique", "findings": "Findings", "impression": "Impressions"}
    out: dict[str, str] = {}
    for split, (_, reports, _) in SPLIT_FILES.items():
        path = Path(root) / reports
        if not path.is_file():
            continue
        header, rows = read_table(path)
        missing = [REPORT_COLUMNS[s] for s in sections if REPORT_COLUMNS[s] not in header]
        if "VolumeName" not in header or missing:
            raise InputError(f"{path}: needs columns VolumeName and {', '.join(REPORT_COLUMNS[s] for s in sections)} (missing: "
                             f"{', '.join(missing or ['VolumeName'])})")
        for row in rows:
            parts = [f"{heading[s]}: {row[REPORT_COLUMNS[s]].strip()}" for s in sections if (row.get(REPORT_COLUMNS[s]) or "").strip()]
            out[row["VolumeName"].strip()] = " ".join(parts)
    return out


def label_files(root: Path) -> list[Path]:
    """The released ``multi_abnormality_labels`` CSVs present under ``root``."""
    return [Path(root) / labels for _, _, labels in SPLIT_FILES.values() if (Path(root) / labels).is_file()]
