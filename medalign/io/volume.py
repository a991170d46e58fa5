"""The core image type every reader returns, and the series-selection policy readers follow.

A :class:`Volume` carries its array, its world geometry and typed provenance; no reader returns
names, birth dates or other identifiers (``patient_id`` stays in memory, see the field).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from medalign.errors import ConfigError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: acquisition planes by the patient axis (LPS x, y, z) the slice normal follows
PLANES = ("sagittal", "coronal", "axial", "oblique")
#: a normal within ~37 degrees of a patient axis names that plane (gantry-tilted axial CT stays axial)
PLANE_COSINE = 0.8


def acquisition_plane(iop: Any) -> str:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from ImageOrientationPatient (6 cosines)."""
    iop = np.asarray(iop, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    normal = normal / (np.linalg.norm(normal) or 1.0)
    axis = int(np.argmax(np.abs(normal)))
    return PLANES[axis] if abs(normal[axis]) >= PLANE_COSINE else "oblique"


@dataclasses.dataclass
class Volume:
    """A 3D image in world space and what its reader learned about it (pseudonymous only).

    ``array`` is ``(X, Y, Z)`` float32 indexed (column, row, slice) — for OCT (A-scan, depth,
    B-scan); ``affine`` is the ``(4, 4)`` voxel-to-RAS-millimetre matrix.
    """

    array: np.ndarray
    affine: np.ndarray
    #: the reader that made it (``dicom``, ``nifti``, ``heidelberg-vol``, ``topcon-fda``, ...)
    source: str = ""
    #: DICOM Modality (``CT``, ``OPT``, ``OCT``); "" when the file does not say
    modality: str = ""
    #: the device maker (the model card counts studies per maker); never a person
    manufacturer: str = ""
    #: ``OD`` / ``OS`` for an eye, "" otherwise or unknown
    laterality: str = ""
    #: OCT scan pattern (``volume``, ``line``, ``circle``, ...); "" for CT and NIfTI
    scan_pattern: str = ""
    #: what the reader decided about geometry the file left open (resampling, assumed spacings)
    geometry_note: str = ""
    #: DICOM series identity (pseudonymous key, :attr:`SeriesInfo.key`); "" for single files
    series_key: str = ""
    #: an OCT file's fundus image (SLO/IR) ``(H, W)`` in [0, 1]; written beside the volume, never into it
    localizer: np.ndarray | None = None
    #: the fundus image's pixel size in mm, column then row; None when the file does not say
    localizer_spacing: tuple[float, float] | None = None
    #: why the array was mirrored ("" when it was not): left eyes in right-eye orientation
    mirrored: str = ""
    #: DICOM PatientID, in memory only: preparation hashes it to keep a patient's studies in one split
    patient_id: str = dataclasses.field(default="", repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


@dataclasses.dataclass
class SeriesSelection:
    """Which series of a study becomes its volume."""

    modalities: list[str] = dataclasses.field(default_factory=lambda: ["CT"])
    skip_image_types: list[str] = dataclasses.field(default_factory=lambda: ["LOCALIZER", "DERIVED", "SECONDARY"])
    skip_secondary_capture: bool = True
    #: acquisition planes allowed (axial, coronal, sagittal, oblique; from the slice normal); empty: any
    planes: list[str] = dataclasses.field(default_factory=lambda: ["axial"])
    min_slices: int = 8
    #: series covering at least this fraction of the study's longest coverage count as full
    #: coverage; among those the thinnest slices win (then the most slices)
    min_coverage_fraction: float = 0.9
    #: relative deviation of slice steps from their median above which spacing counts as uneven
    max_spacing_deviation: float = 0.2
    #: uneven spacing (missing slices): refuse the series, or interpolate onto the regular grid
    on_uneven_spacing: str = "reject"
    #: gantry tilt (slice origins drift within the slice plane): shift each slice back onto an
    #: orthogonal grid as dcm2niix does, or refuse the series
    on_gantry_tilt: str = "resample"
    #: a multi-frame object whose frames lack positions or share one (some OCT exports): refuse it,
    #: or stack the frames in their in-stack order at the slice spacing its pixel measures give
    on_missing_frame_positions: str = "reject"
    #: ``best``: one volume per study, the series chosen above; ``all``: every series with full
    #: coverage becomes a volume of its own (several reconstructions of one study, as CT-RATE keeps)
    select: str = "best"

    def validate(self, where: str) -> None:
        unknown = sorted(set(self.planes) - set(PLANES))
        if unknown:
            raise ConfigError.at(where, "planes", f"{', '.join(unknown)} not among {', '.join(PLANES)}")
        if not 0.0 < self.min_coverage_fraction <= 1.0:
            raise ConfigError.at(where, "min_coverage_fraction", f"{self.min_coverage_fraction} is not in (0, 1]")
        if self.on_uneven_spacing not in ("reject", "resample"):
            raise ConfigError.at(where, "on_uneven_spacing", f"'{self.on_uneven_spacing}' is not reject or resample")
        if self.on_gantry_tilt not in ("reject", "resample"):
            raise ConfigError.at(where, "on_gantry_tilt", f"'{self.on_gantry_tilt}' is not reject or resample")
        if self.select not in ("best", "all"):
            raise ConfigError.at(where, "select", f"'{self.select}' is not best or all")
        if self.on_missing_frame_positions not in ("reject", "frame_order"):
            raise ConfigError.at(where, "on_missing_frame_positions", f"'{self.on_missing_frame_positions}' is not reject or frame_order")


def mirror_to_right_eye(volume: Volume) -> Volume:
    """A left eye's (OS) volume mirrored along its lateral axis so the nasal side lies where a right
    eye's does, its fundus image (``localizer``, columns along the same axis) with it; other
    volumes as they are."""
    if volume.laterality != "OS":
        return volume
    localizer = None if volume.localizer is None else np.ascontiguousarray(volume.localizer[:, ::-1])
    return dataclasses.replace(volume, array=np.ascontiguousarray(volume.array[::-1]), affine=volume.affine.copy(),
                               localizer=localizer, mirrored="left eye mirrored to right-eye orientation")
