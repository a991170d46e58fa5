"""Write phantom volumes as real DICOM: one CT Image Storage file per slice, or one
multi-frame Ophthalmic Tomography object. Headers carry made-up identities on purpose, so
the pipeline's privacy guarantees are exercised."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from medalign.prep.presets import PHANTOM_MANUFACTURER  # the Manufacturer of every phantom file: prep gives the demo presets only to these

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
OPHTHALMIC_TOMOGRAPHY_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.4"


@dataclasses.dataclass
class FakePatient:
    """Made-up identifiers that must never reach medalign's outputs."""

    name: str
    patient_id: str
    birth_date: str
    accession: str
    institution: str

    @classmethod
    def random(cls, rng: np.random.Generator) -> FakePatient:
        first = rng.choice(["JANE", "JOHN", "MARIA", "AHMED", "LI", "OLGA", "PIETRO", "AMARA"])
        last = rng.choice(["DOE", "SMITH", "GARCIA", "MULLER", "NGUYEN", "ROSSI", "OKAFOR", "KOWALSKI"])
        return cls(
            name=f"{last}^{first}^{rng.integers(100, 999)}",
            patient_id=f"MRN{rng.integers(10**7, 10**8)}",
            birth_date=f"19{rng.integers(30, 99)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
            accession=f"ACC{rng.integers(10**6, 10**7)}",
            institution=f"{rng.choice(['St', 'General', 'University'])} Hospital {rng.integers(1, 99)}",
        )



def _base_dataset(sop_class: str, patient: FakePatient, study_uid: str, series_uid: str, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.AccessionNumber = patient.accession
    ds.InstitutionName = patient.institution
    ds.Manufacturer = PHANTOM_MANUFACTURER  # lets prep tell the phantom from hospital data (the demo presets)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid(prefix=None, entropy_srcs=[study_uid, "frame-of-reference"])
    ds.StudyDate = "20250101"
    ds.Modality = modality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def write_ct_series(
    hu: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    origin_lps: tuple[float, float, float],
    folder: Path,
    patient: FakePatient,
    study_uid: str,
    rng: np.random.Generator,
    *,
    signed: bool = False,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    series_number: int = 2,
    description: str = "CHEST AXIAL",
    gantry_tilt_deg: float = 0.0,
) -> list[Path]:
    """Write ``hu`` ``(Z, Y, X)`` as one axial CT series, one file per slice with random names.

    ``signed`` stores int16 with intercept 0; otherwise uint16 with intercept -1024.
    ``gantry_tilt_deg`` stacks the slices as a tilted gantry does: each slice's origin also moves
    ``dz * tan(tilt)`` up the columns, so the stack direction is not the slice normal.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    dz, dy, dx = spacing_zyx
    row_cos = np.asarray(orientation[:3], float)
    col_cos = np.asarray(orientation[3:], float)
    normal = np.cross(row_cos, col_cos)
    paths = []
    for k in range(hu.shape[0]):
        ds = _base_dataset(CT_IMAGE_STORAGE, patient, study_uid, series_uid, "CT")
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.InstanceNumber = int(rng.integers(1, 10_000))  # deliberately meaningless
        ds.ImageType = list(image_type)
        # the sign convention dcm2niix checks the tag against ("estimated from slice vector")
        shear = -k * dz * np.tan(np.radians(gantry_tilt_deg)) * col_cos
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin_lps) + k * dz * normal + shear]
        if gantry_tilt_deg:
            ds.GantryDetectorTilt = float(gantry_tilt_deg)
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(dy), float(dx)]
        ds.SliceThickness = float(dz)
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if signed else 12
        ds.HighBit = ds.BitsStored - 1
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        if signed:
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = 0
            pixels = np.clip(np.round(hu[k]), -1024, 3071).astype(np.int16)
        else:
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = -1024
            pixels = np.clip(np.round(hu[k]) + 1024, 0, 4095).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"{rng.bytes(6).hex()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_oct_volume(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    path: Path,
    patient: FakePatient,
    study_uid: str,
) -> Path:
    """Write ``volume`` ``(frames, rows, cols)`` uint8 as one Ophthalmic Tomography multi-frame object.

    ``spacing`` is (between B-scans, axial depth, lateral) in mm. Rows run in depth (posterior),
    columns across the retina (left), B-scans stack superiorly; the geometry is in the
    functional groups as the standard requires.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    d_frame, d_depth, d_lat = spacing
    ds = _base_dataset(OPHTHALMIC_TOMOGRAPHY_STORAGE, patient, study_uid, generate_uid(), "OPT")
    ds.SeriesNumber = 1
    ds.SeriesDescription = "OCT MACULA CUBE"
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Laterality = "R"
    ds.NumberOfFrames = int(volume.shape[0])
    ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [float(d_depth), float(d_lat)]
    measures.SliceThickness = float(d_frame)
    shared.PixelMeasuresSequence = Sequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(volume.shape[0]):
        fg = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, float(k * d_frame)]
        fg.PlanePositionSequence = Sequence([pos])
        content = Dataset()
        content.InStackPositionNumber = k + 1
        fg.FrameContentSequence = Sequence([content])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(volume, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
