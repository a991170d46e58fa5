"""Train / val / test splits: by a hash of the study id, or of the patient so that one patient's
studies never straddle two splits; a user's split column checked against the patients."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medalign.errors import InputError


def assign_split(study_id: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """Deterministic train/val/test split from a hash of ``study_id`` (or of ``"patient:" + PatientID``)."""
    u = int(hashlib.sha256(study_id.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def read_patient_hash(path: Path, files: list[str] | None) -> str | None:
    """The SHA-256 of the PatientID of a study an earlier run prepared (one DICOM header read), or None
    (no DICOM: NIfTI, vendor OCT; or no PatientID)."""
    import pydicom

    candidates = [Path(f) for f in files] if files else ([path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()))
    for f in candidates[:16]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # noqa: BLE001 - not DICOM (a README, a NIfTI file): try the next
            continue
        patient = str(ds.get("PatientID", "") or "").strip()
        return hashlib.sha256(patient.encode("utf-8")).hexdigest() if patient else None
    return None


def patients_per_split(rows: list[dict], patient_of: dict[str, str], given_split: bool, reports: Path) -> dict[str, int]:
    """Distinct patients per split, from the studies' hashed PatientIDs. A split column given in the
    reports file that puts one patient in two splits is refused (``InputError``): a prior in train and
    the current study in test would score the model on a patient it trained on."""
    split_of = {r["study_id"]: r["split"] for r in rows}
    splits_of: dict[str, dict[str, str]] = {}
    for sid, patient in patient_of.items():
        if sid in split_of:
            splits_of.setdefault(patient, {}).setdefault(split_of[sid], sid)
    straddling = [studies for studies in splits_of.values() if len(studies) > 1]
    if given_split and straddling:
        first = ", ".join(f"{sid} ({split})" for split, sid in sorted(straddling[0].items(), key=lambda kv: kv[1]))
        raise InputError(f"{reports}: the split column puts one patient in two splits: studies {first} share a PatientID "
                         f"({len(straddling)} patient{'s' if len(straddling) > 1 else ''} in all); keep each patient's studies "
                         "in one split, or drop the split column (prep then splits by patient)")
    if not splits_of:
        return {}
    return {s: sum(s in studies for studies in splits_of.values()) for s in ("train", "val", "test")}
