"""DICOM series: find them in a folder, choose one per study, sort its slices, build a volume.

Geometry follows the DICOM standard (and dcm2niix): slices are ordered by the projection of
ImagePositionPatient on the slice normal, never by file name or InstanceNumber; the slice
step comes from positions, not SliceThickness; the affine maps voxel (i=column, j=row,
k=slice) to RAS millimetres, as NIfTI and nibabel expect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medalign.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: SOP classes that never hold an image volume (SR, dose reports, presentation states, KOS, ...).
NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports (incl. radiation dose SR)
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def is_secondary_capture(sop_class_uid: str) -> bool:
    """Secondary Capture and its multi-frame variants (1.2.840.10008.5.1.4.1.1.7[.1-.4]); not 1.1.77.*."""
    return sop_class_uid == SECONDARY_CAPTURE or sop_class_uid.startswith(SECONDARY_CAPTURE + ".")

#: Refuse volumes above this many voxels before allocating them.
MAX_VOXELS = 2048 * 2048 * 4096
#: no CT, MR or OCT frame is wider than this; larger Rows/Columns are corrupt headers
MAX_SIDE = 8192
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass
class Volume:
    """A 3D image in world space.

    ``array`` is ``(X, Y, Z)`` float32 indexed (column, row, slice); ``affine`` is the
    ``(4, 4)`` voxel-to-RAS-millimetre matrix; ``info`` holds pseudonymous provenance only.
    """

    array: np.ndarray
    affine: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

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
    min_slices: int = 8
    #: relative deviation of slice steps from their median above which spacing counts as uneven
    max_spacing_deviation: float = 0.2
    #: uneven spacing (missing slices): refuse the series, or interpolate onto the regular grid
    on_uneven_spacing: str = "reject"
    #: gantry tilt (slice origins drift within the slice plane): shift each slice back onto an
    #: orthogonal grid as dcm2niix does, or refuse the series
    on_gantry_tilt: str = "resample"

    def validate(self, where: str) -> None:
        if self.on_uneven_spacing not in ("reject", "resample"):
            raise ConfigError(f"{where}.on_uneven_spacing: '{self.on_uneven_spacing}' is not reject or resample")
        if self.on_gantry_tilt not in ("reject", "resample"):
            raise ConfigError(f"{where}.on_gantry_tilt: '{self.on_gantry_tilt}' is not reject or resample")


@dataclasses.dataclass
class SeriesInfo:
    """Headers of one series, enough to choose between series and to load it."""

    study_uid: str
    series_uid: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    description: str
    files: list[Path]
    n_frames: int  # total frames over all files (slices for classic, frames for multi-frame)
    slice_step: float | None = None  # median distance between slice positions, when known

    @property
    def key(self) -> str:
        """Pseudonymous short key of the series (no UID reaches disk)."""
        return hashlib.sha256(self.series_uid.encode()).hexdigest()[:12]


def _str(ds: Dataset, name: str, default: str = "") -> str:
    value = ds.get(name, default)
    return default if value is None else str(value)


def read_header(path: Path) -> Dataset | None:
    """Read a file's DICOM header without pixels; ``None`` when it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def scan_series(root: Path) -> tuple[list[SeriesInfo], list[tuple[Path, str]]]:
    """Group every DICOM file under ``root`` (recursively) into series.

    Returns the series and ``(file, reason)`` for files that were skipped.
    """
    groups: dict[tuple[str, str], list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped: list[tuple[Path, str]] = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        if path.name.upper() == "DICOMDIR":
            skipped.append((path, "DICOMDIR index file"))
            continue
        ds = read_header(path)
        if ds is None:
            skipped.append((path, "not a readable DICOM file"))
            continue
        sop = _str(ds, "SOPClassUID")
        if sop.startswith(NON_IMAGE_SOP_PREFIXES) or "Rows" not in ds:
            skipped.append((path, f"non-image object (SOP class {sop or 'unknown'})"))
            continue
        groups[(_str(ds, "StudyInstanceUID"), _str(ds, "SeriesInstanceUID"))].append((path, ds))
    series = []
    for (study_uid, series_uid), items in groups.items():
        first = items[0][1]
        n_frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items)
        info = SeriesInfo(
            study_uid=study_uid,
            series_uid=series_uid,
            modality=_str(first, "Modality").upper(),
            sop_class_uid=_str(first, "SOPClassUID"),
            image_type=tuple(str(v).upper() for v in (first.get("ImageType") or [])),
            description=_str(first, "SeriesDescription"),
            files=[p for p, _ in items],
            n_frames=n_frames,
        )
        positions = [_position_along_normal(ds) for _, ds in items if int(ds.get("NumberOfFrames", 1) or 1) == 1]
        positions = sorted(p for p in positions if p is not None)
        if len(positions) > 1:
            info.slice_step = float(np.median(np.diff(positions)))
        series.append(info)
    return series, skipped


def _position_along_normal(ds: Dataset) -> float | None:
    try:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    except (AttributeError, ValueError, TypeError):
        return None
    return float(np.dot(ipp, np.cross(iop[:3], iop[3:])))


def select_series(series: list[SeriesInfo], policy: SeriesSelection) -> tuple[SeriesInfo, str]:
    """Choose the series that becomes the study's volume; returns it and why.

    Candidates must have an allowed modality and image type, and enough slices; among them the
    one with the most frames wins, ties going to the thinnest slice step.
    """
    if not series:
        raise InputError("no DICOM image series found")
    rejected = []
    candidates = []
    for s in series:
        if policy.modalities and s.modality not in policy.modalities:
            rejected.append(f"{s.key}: modality {s.modality or '?'}")
        elif any(t in s.image_type for t in policy.skip_image_types):
            rejected.append(f"{s.key}: image type {'/'.join(s.image_type)}")
        elif policy.skip_secondary_capture and is_secondary_capture(s.sop_class_uid):
            rejected.append(f"{s.key}: secondary capture")
        elif s.n_frames < policy.min_slices:
            rejected.append(f"{s.key}: {s.n_frames} slices < {policy.min_slices}")
        else:
            candidates.append(s)
    if not candidates:
        raise InputError("no usable series (" + "; ".join(rejected) + ")")
    best = max(candidates, key=lambda s: (s.n_frames, -(s.slice_step or 0.0)))
    reason = f"series {best.key}: {best.modality} {'/'.join(best.image_type)}, {best.n_frames} slices"
    if len(series) > 1:
        reason += f"; chosen over {len(series) - 1} other series"
        if rejected:
            reason += " (" + "; ".join(rejected) + ")"
    return best, reason


def _rescale(ds: Dataset, frame_groups: Dataset | None = None) -> tuple[float, float]:
    """(slope, intercept) from the frame's, the shared, or the top-level Pixel Value Transformation."""
    for source in (frame_groups, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if source is not None and "PixelValueTransformationSequence" in source:
            pvt = source.PixelValueTransformationSequence[0]
            return float(pvt.get("RescaleSlope", 1) or 1), float(pvt.get("RescaleIntercept", 0) or 0)
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _functional(ds: Dataset, groups: Dataset | None, seq: str, attr: str) -> Any:
    """An attribute from a per-frame group, else the shared group, else the top level."""
    for source in (groups, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if source is not None and seq in source and attr in source[seq].value[0]:
            return source[seq].value[0][attr].value
    if attr in ds:
        return ds[attr].value
    return None


@dataclasses.dataclass
class _Slice:
    pixels: np.ndarray  # (rows, cols) float32, rescaled
    ipp: np.ndarray
    iop: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns)
    source: Path


def _slices_from_file(path: Path) -> list[_Slice]:
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a per-file input error
        raise InputError(f"{path.name}: unreadable DICOM ({e.__class__.__name__}: {e})") from None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows > MAX_SIDE or cols > MAX_SIDE or rows * cols * n_frames > MAX_VOXELS:
        # refused from the header, before any pixel buffer is allocated
        raise InputError(f"{path.name}: absurd dimensions {rows}x{cols}x{n_frames} (limit {MAX_SIDE} per side, {MAX_VOXELS} voxels)")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise InputError(f"{path.name}: no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - truncated data, missing decoder plugin, ...
        raise InputError(f"{path.name}: cannot decode pixel data ({e.__class__.__name__}: {e})") from None
    if n_frames == 1:
        pixels = pixels[None]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out = []
    for f in range(n_frames):
        groups = per_frame[f] if per_frame is not None and len(per_frame) > f else None
        ipp = _functional(ds, groups, "PlanePositionSequence", "ImagePositionPatient")
        iop = _functional(ds, groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _functional(ds, groups, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or ps is None:
            raise InputError(f"{path.name}: frame {f} lacks ImagePositionPatient/ImageOrientationPatient/PixelSpacing")
        slope, intercept = _rescale(ds, groups)
        out.append(
            _Slice(
                pixels=pixels[f].astype(np.float32) * np.float32(slope) + np.float32(intercept),
                ipp=np.asarray(ipp, dtype=float),
                iop=np.asarray(iop, dtype=float),
                spacing=(float(ps[0]), float(ps[1])),
                source=path,
            )
        )
    return out


def sort_slices_by_position(slices: list[_Slice]) -> tuple[list[_Slice], np.ndarray]:
    """Order slices along the normal of their shared orientation; returns slices and positions (mm)."""
    iop = slices[0].iop
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([float(np.dot(s.ipp, normal)) for s in slices])
    order = np.argsort(positions, kind="stable")
    return [slices[i] for i in order], positions[order]


def volume_from_slices(slices: list[_Slice], policy: SeriesSelection | None = None) -> Volume:
    """Stack slices into a :class:`Volume`, checking that they form one regular grid."""
    policy = policy or SeriesSelection()
    if not slices:
        raise InputError("series has no slices")
    first = slices[0]
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape:
            raise InputError(f"{s.source.name}: slice size {s.pixels.shape} differs from {first.pixels.shape}")
        if not np.allclose(s.iop, first.iop, atol=1e-3):
            raise InputError(f"{s.source.name}: orientation differs from the rest of the series")
        if not np.allclose(s.spacing, first.spacing, rtol=1e-3):
            raise InputError(f"{s.source.name}: pixel spacing differs from the rest of the series")
    slices, positions = sort_slices_by_position(slices)
    first = slices[0]  # the origin is the lowest slice along the normal
    if len(slices) > 1:
        steps = np.diff(positions)
        if np.any(steps < 1e-3):
            dup = slices[int(np.argmin(steps)) + 1].source.name
            raise InputError(f"{dup}: two slices at one position ({positions[np.argmin(steps)]:.2f} mm)")
        median = float(np.median(steps))
        note = ""
        if np.max(np.abs(steps - median)) > policy.max_spacing_deviation * median:
            if policy.on_uneven_spacing != "resample":
                raise InputError(
                    f"uneven slice spacing (steps {steps.min():.2f}-{steps.max():.2f} mm, median {median:.2f}): missing slices?"
                )
            slices, note = _resample_to_regular_grid(slices, positions, median)
        drift = in_plane_drift(slices)
        if np.abs(drift).max() > 0.01:  # a hundredth of a pixel: below that the stack is orthogonal
            if policy.on_gantry_tilt != "resample":
                raise InputError(f"gantry tilt: slice origins drift {np.abs(drift).max():.1f} pixels within the slice plane")
            slices, tilt_note = correct_gantry_tilt(slices, drift)
            note = "; ".join(n for n in (note, tilt_note) if n)
            first = slices[0]
        step_vec = (slices[-1].ipp - slices[0].ipp) / (len(slices) - 1)
    else:
        step_vec = np.cross(first.iop[:3], first.iop[3:])
    row_cos, col_cos = first.iop[:3], first.iop[3:]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * first.spacing[1]  # i walks along a row: column spacing
    lps[:3, 1] = col_cos * first.spacing[0]  # j walks down a column: row spacing
    lps[:3, 2] = step_vec
    lps[:3, 3] = first.ipp
    array = np.stack([s.pixels.T for s in slices], axis=-1).astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError("volume holds NaN or infinite values")
    info = {"n_slices": len(slices)}
    if len(slices) > 1 and note:
        info["resampled"] = note
    return Volume(array=array, affine=LPS_TO_RAS @ lps, info=info)


def _resample_to_regular_grid(slices: list[_Slice], positions: np.ndarray, step: float) -> tuple[list[_Slice], str]:
    """Linear interpolation along the normal onto positions ``p0 + j * step`` (fills missing slices)."""
    n_new = int(round((positions[-1] - positions[0]) / step)) + 1
    targets = positions[0] + step * np.arange(n_new)
    out = []
    for q in targets:
        k = int(np.clip(np.searchsorted(positions, q) - 1, 0, len(slices) - 2))
        w = float(np.clip((q - positions[k]) / (positions[k + 1] - positions[k]), 0.0, 1.0))
        a, b = slices[k], slices[k + 1]
        out.append(_Slice(
            pixels=((1 - w) * a.pixels + w * b.pixels).astype(np.float32),
            ipp=(1 - w) * a.ipp + w * b.ipp,
            iop=a.iop,
            spacing=a.spacing,
            source=a.source if w < 0.5 else b.source,
        ))
    return out, f"uneven slice spacing: {len(slices)} slices resampled to {n_new} at {step:.2f} mm"


def in_plane_drift(slices: list[_Slice]) -> np.ndarray:
    """``(N, 2)`` how far each slice's origin lies from the first one's normal line, in pixels
    (rows, columns): zero for an orthogonal stack, growing steadily under gantry tilt."""
    row_cos, col_cos = slices[0].iop[:3], slices[0].iop[3:]
    d = np.stack([s.ipp - slices[0].ipp for s in slices])
    return np.stack([d @ col_cos / slices[0].spacing[0], d @ row_cos / slices[0].spacing[1]], axis=1)


def correct_gantry_tilt(slices: list[_Slice], drift: np.ndarray) -> tuple[list[_Slice], str]:
    """Shift each slice within its plane (linear interpolation) onto one grid whose third axis is the
    slice normal, widened to hold every shifted slice and filled with the series' minimum: what
    dcm2niix writes as ``*_Tilt_1.nii``. ``drift`` is :func:`in_plane_drift`."""
    from scipy.ndimage import shift as shift_image

    # whole pixels of margin on each side (dcm2niix's grid: the first slice's pixels stay on it)
    low = np.floor(np.minimum(drift.min(axis=0), 0.0) + 1e-6)
    extra = (np.ceil(np.maximum(drift.max(axis=0), 0.0) - 1e-6) - low).astype(int)
    rows, cols = slices[0].pixels.shape
    fill = float(min(s.pixels.min() for s in slices))
    row_cos, col_cos = slices[0].iop[:3], slices[0].iop[3:]
    origin = slices[0].ipp + low[0] * slices[0].spacing[0] * col_cos + low[1] * slices[0].spacing[1] * row_cos
    normal = np.cross(row_cos, col_cos)
    out = []
    for s, d in zip(slices, drift):
        canvas = np.full((rows + extra[0], cols + extra[1]), fill, dtype=np.float32)
        canvas[:rows, :cols] = s.pixels
        # new pixel (j, i) is source pixel (j + low - d): ndimage's shift moves content by +(d - low)
        moved = shift_image(canvas, d - low, order=1, mode="constant", cval=fill, prefilter=False)
        # a pixel whose interpolation reaches past the slice's edge is fill, not a blend with it (as dcm2niix)
        inside = np.zeros_like(canvas)
        inside[:rows, :cols] = 1.0
        moved[shift_image(inside, d - low, order=1, mode="constant", cval=0.0, prefilter=False) < 1.0 - 1e-4] = fill
        ipp = origin + float(np.dot(s.ipp - slices[0].ipp, normal)) * normal
        out.append(dataclasses.replace(s, pixels=moved.astype(np.float32), ipp=ipp))
    tilt = np.degrees(np.arctan2(np.linalg.norm((slices[-1].ipp - slices[0].ipp) - np.dot(slices[-1].ipp - slices[0].ipp, normal) * normal),
                                 abs(float(np.dot(slices[-1].ipp - slices[0].ipp, normal)))))
    return out, f"gantry tilt {tilt:.1f} deg corrected: slices shifted in-plane onto a {rows + extra[0]}x{cols + extra[1]} grid"


def load_series(series: SeriesInfo, policy: SeriesSelection | None = None) -> Volume:
    """Read every file of ``series`` (single- or multi-frame) into a :class:`Volume`."""
    slices: list[_Slice] = []
    for path in series.files:
        slices.extend(_slices_from_file(path))
    if len(slices) > MAX_VOXELS // max(1, slices[0].pixels.size):
        raise InputError(f"series {series.key}: absurd number of slices ({len(slices)})")
    vol = volume_from_slices(slices, policy)
    vol.info.update({"series_key": series.key, "modality": series.modality})
    return vol


def load_dicom_study(folder: Path, policy: SeriesSelection | None = None) -> tuple[Volume, str]:
    """Scan ``folder``, choose its series by ``policy`` and load it; returns the volume and why it was chosen."""
    policy = policy or SeriesSelection()
    series, _ = scan_series(folder)
    if not series:
        raise InputError(f"{folder}: no DICOM image files found")
    chosen, reason = select_series(series, policy)
    volume = load_series(chosen, policy)
    if "resampled" in volume.info:
        reason += f"; {volume.info['resampled']}"
    return volume, reason
