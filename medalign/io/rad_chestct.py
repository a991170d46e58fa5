"""RAD-ChestCT's published files (Draelos et al. 2021, Zenodo record 6406114), read as they are.

::

    ROOT/**/<NoteAcc_DEID>.npz              one CT each (trn00001, val27291, tst34780): key ``ct``
    ROOT/**/img{train,valid,test}_Abnormality_and_Location_Labels.csv
                                           NoteAcc_DEID + one 0/1 column per ``abnormality*location``
    ROOT/**/CT_Scan_Metadata_Complete_35747.csv   (optional) NoteAcc_DEID, MRN_DEID: the patient

What was checked against the authors' own preprocessing (``rachellea/ct-volume-preprocessing``,
``preprocess_volumes.py`` and its ``dicom_numpy/combine_slices.py``): slices are stacked by
ImagePositionPatient along the slice normal in *descending* order (the first slice is the most
superior), only ImageOrientationPatient ``[1,0,0,0,1,0]`` is accepted, the volume is rescaled to HU,
resampled to 0.8 x 0.8 x 0.8 mm, clipped to [-1000, 1000] HU, transposed to ``[slice, row, column]``
and saved as int16 with ``np.savez_compressed(..., ct=volume)``. So axis 0 runs superior -> inferior,
axis 1 (rows) anterior -> posterior, axis 2 (columns) patient right -> left. No origin is kept: the
volume is placed with its first voxel at the world origin. Their loader (``ct-net-models``) reads
``np.load(path)['ct']``. There are no public reports.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.tables import read_table
from medalign.io.volume import Volume

#: ``<set><number>.npz``: trn / val / tst, as NoteAcc_DEID writes the three official sets
VOLUME_NAME = re.compile(r"^(trn|val|tst)(\d+)\.npz$")
#: the official sets, by NoteAcc_DEID prefix, as medalign's splits
SPLITS = {"trn": "train", "val": "val", "tst": "test"}
#: the label files of the three sets
LABEL_FILES = ("imgtrain_Abnormality_and_Location_Labels.csv", "imgvalid_Abnormality_and_Location_Labels.csv",
               "imgtest_Abnormality_and_Location_Labels.csv")
METADATA_FILE = "CT_Scan_Metadata_Complete_35747.csv"
#: how a prepared RAD-ChestCT volume's provenance starts (zeroshot's protocol tells the data set by it)
PROVENANCE = "RAD-ChestCT "
#: every published volume's voxel size (their resampling target), mm
VOXEL_MM = 0.8
#: voxel (column, row, slice) to RAS mm: columns run to the patient's left (R decreases), rows to
#: posterior (A decreases), slices to inferior (S decreases)
AFFINE = np.diag([-VOXEL_MM, -VOXEL_MM, -VOXEL_MM, 1.0])


@dataclasses.dataclass(frozen=True)
class NoteAccession:
    """What a RAD-ChestCT file name says: its official set and its study id (``tst34780``)."""

    study_id: str
    split: str


def parse_volume_name(name: str) -> NoteAccession | None:
    """The study and split of ``tst34780.npz``, or None for any other name."""
    m = VOLUME_NAME.match(name)
    return NoteAccession(f"{m.group(1)}{m.group(2)}", SPLITS[m.group(1)]) if m else None


def load_rad_chestct_volume(path: Path) -> Volume:
    """One ``<NoteAcc_DEID>.npz`` as a :class:`Volume` ``(X, Y, Z)`` in HU on its 0.8 mm grid, RAS affine."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "ct" not in npz.files:
                raise InputError(f"{path.name}: no 'ct' array (holds: {', '.join(npz.files) or 'nothing'})")
            stored = npz["ct"]
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy/zipfile raise many types for a bad file
        raise InputError(f"{path.name}: unreadable .npz ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if stored.ndim != 3:
        raise InputError(f"{path.name}: expected a 3D volume [slice, row, column], got shape {stored.shape}")
    if not np.issubdtype(stored.dtype, np.number):
        raise InputError(f"{path.name}: 'ct' holds {stored.dtype}, not numbers")
    array = np.ascontiguousarray(stored.transpose(2, 1, 0), dtype=np.float32)  # [slice, row, column] -> (X, Y, Z)
    if not np.isfinite(array).all():
        raise InputError(f"{path.name}: volume holds NaN or infinite values")
    return Volume(array=array, affine=AFFINE.copy(), source="rad-chestct", modality="CT",
                  geometry_note=f"RAD-ChestCT: {VOXEL_MM} mm isotropic, superior slice first (as published); origin not published")


def read_abnormality_labels(path: Path) -> dict[str, dict[str, int]]:
    """``{NoteAcc_DEID: {abnormality: 0 | 1}}`` from one ``*_Abnormality_and_Location_Labels.csv``:
    an abnormality is present when any of its ``abnormality*location`` columns is 1."""
    path = Path(path)
    header, rows = read_table(path)
    if "NoteAcc_DEID" not in header:
        raise InputError(f"{path}: needs a NoteAcc_DEID column (found: {', '.join(header[:5])}...)")
    columns: dict[str, list[str]] = {}
    for column in header:
        if column != "NoteAcc_DEID":
            if "*" not in column:
                raise InputError(f"{path}: column '{column}' is not abnormality*location")
            columns.setdefault(column.split("*", 1)[0], []).append(column)
    out: dict[str, dict[str, int]] = {}
    for line, row in enumerate(rows, start=2):
        study = (row.get("NoteAcc_DEID") or "").strip()
        if not study:
            raise InputError(f"{path}:{line}: empty NoteAcc_DEID")
        labels = {}
        for abnormality, cols in columns.items():
            try:
                values = [float(row[c]) for c in cols if (row.get(c) or "").strip()]
            except ValueError:
                raise InputError(f"{path}:{line}: a {abnormality}* value is not a number") from None
            if any(v not in (0.0, 1.0) for v in values):
                raise InputError(f"{path}:{line}: {abnormality}* values must be 0 or 1")
            labels[abnormality] = int(any(v == 1.0 for v in values))
        out[study] = labels
    return out


def find_files(root: Path, names: tuple[str, ...] | str) -> list[Path]:
    """The files under ``root`` (any depth) with one of ``names``, sorted."""
    wanted = {names} if isinstance(names, str) else set(names)
    return sorted(p for p in Path(root).rglob("*.csv") if p.name in wanted)


def read_patients(root: Path) -> dict[str, str]:
    """``{NoteAcc_DEID: MRN_DEID}`` from the metadata CSV when it is present (else empty)."""
    out: dict[str, str] = {}
    for path in find_files(root, METADATA_FILE):
        header, rows = read_table(path)
        if "NoteAcc_DEID" not in header or "MRN_DEID" not in header:
            raise InputError(f"{path}: needs columns NoteAcc_DEID and MRN_DEID")
        out.update({row["NoteAcc_DEID"].strip(): row["MRN_DEID"].strip() for row in rows if (row.get("MRN_DEID") or "").strip()})
    return out
