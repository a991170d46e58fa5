"""``medalign synth --layout rad-chestct``: phantom chest CTs written as RAD-ChestCT publishes its data
set (:mod:`medalign.io.rad_chestct`): ``<NoteAcc_DEID>.npz`` holding ``ct``, int16 HU clipped to
[-1000, 1000] on a 0.8 mm grid, superior slice first, rows anterior -> posterior, columns right ->
left; abnormality*location label CSVs per official set; the metadata CSV's patient column.
``truth/<NoteAcc_DEID>.nii.gz`` holds each volume in HU on its true grid and orientation: what
``prep --layout rad-chestct`` must read the tree as. The grid covers a central block of the chest
(0.8 mm voxels over a whole chest would make test files of hundreds of MB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_write
from medalign.io.nifti import save_nifti
from medalign.io.rad_chestct import LABEL_FILES, METADATA_FILE, VOXEL_MM
from medalign.io.volume import LPS_TO_RAS, Volume
from medalign.synth.ct import CTGrid, make_ct_case
from medalign.synth.writer import write_csv

#: the phantom's findings as RAD-ChestCT names them, with the locations a positive is written at
RAD_ABNORMALITIES = {"pleural effusion": ("pleural_effusion", ("right_lung", "left_lung")), "cardiomegaly": ("cardiomegaly", ("heart",)),
                     "lung nodule": ("nodule", ("right_upper", "left_lower")), "emphysema": ("emphysema", ("lung",)),
                     "consolidation": ("consolidation", ("right_lower",))}
#: abnormalities the phantom never has, written as columns all 0 (the published files have 84)
ABSENT = (("suture", "chest_wall"), ("lymphadenopathy", "mediastinum"), ("calcification", "aorta"))
#: a central block of the chest at RAD-ChestCT's voxel size: (Z, Y, X)
GRID = CTGrid(shape=(48, 128, 128), spacing=(VOXEL_MM, VOXEL_MM, VOXEL_MM))


def _columns() -> list[str]:
    out = [f"{name}*{loc}" for name, locations in RAD_ABNORMALITIES.values() for loc in locations]
    return out + [f"{name}*{loc}" for name, loc in ABSENT]


def synthesize_rad_chestct(out: Path, studies: int = 9, seed: int = 0) -> dict:
    """Write ``studies`` phantom volumes as ``out/dataset/`` in RAD-ChestCT's layout (sets trn, val,
    tst in turn; every third volume a second scan of the previous patient) and ``out/truth/``."""
    out = Path(out)
    root = out / "dataset"
    if root.is_dir() and any(root.iterdir()):
        raise InputError(f"{root}: already holds a data set; synthesize into an empty folder")
    rng = np.random.default_rng(seed)
    dz, dy, dx = GRID.spacing
    lps = np.diag([dx, dy, dz, 1.0])
    lps[:3, 3] = GRID.origin_lps()
    true_affine = LPS_TO_RAS @ lps
    columns = _columns()
    labels: dict[str, list[list]] = {"trn": [], "val": [], "tst": []}
    metadata = []
    patient = 0
    for n in range(studies):
        prefix = ("trn", "val", "tst")[(n // 3) % 3]  # a patient's scans stay in one set
        patient += n % 3 != 1
        name = f"{prefix}{n + 1:05d}"
        case = make_ct_case(rng, GRID)
        hu = np.clip(np.rint(case.hu), -1000, 1000)  # (Z, Y, X) LPS, inferior slice first
        stored = hu[::-1].astype(np.int16)  # as published: superior slice first
        path = root / f"part{n % 2 + 1}" / f"{name}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: (np.savez_compressed(str(tmp) + ".npz", ct=stored), Path(str(tmp) + ".npz").replace(tmp)))
        save_nifti(Volume(hu.transpose(2, 1, 0).astype(np.float32), true_affine), out / "truth" / f"{name}.nii.gz")
        present = {RAD_ABNORMALITIES[f][0] for f, v in case.labels.items() if v and f in RAD_ABNORMALITIES}
        labels[prefix].append([name, *(int(c.split("*")[0] in present and c.split("*")[1] == _first_location(c)) for c in columns)])
        metadata.append([f"MRN{patient:05d}", name, f"{n + 1}"])
    for prefix, file in zip(("trn", "val", "tst"), LABEL_FILES):
        write_csv(root / "labels" / file, ["NoteAcc_DEID", *columns], labels[prefix])
    write_csv(root / METADATA_FILE, ["MRN_DEID", "NoteAcc_DEID", "VolumeAcc_DEID"], metadata)
    return {"images": str(root), "truth": str(out / "truth"), "studies": studies}


def _first_location(column: str) -> str:
    """A positive finding is written at its first listed location (the others stay 0: any location counts)."""
    name = column.split("*")[0]
    for abnormality, locations in RAD_ABNORMALITIES.values():
        if abnormality == name:
            return locations[0]
    return ""
