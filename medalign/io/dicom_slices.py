"""The slices of one DICOM series into a volume: pixels per file (single- and multi-frame, mosaics,
rescale to physical units), slices sorted by position along the normal, a regular grid (uneven
spacing resampled or refused), gantry tilt corrected as dcm2niix does, and the affine.

Geometry follows the DICOM standard (and dcm2niix): slices are ordered by the projection of
ImagePositionPatient on the slice normal, never by file name or InstanceNumber; the slice step comes
from positions, not SliceThickness; the affine maps voxel (i=column, j=row, k=slice) to RAS mm.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medalign.errors import InputError
from medalign.io.volume import LPS_TO_RAS, SeriesSelection, Volume


#: Refuse volumes above this many voxels before allocating them.
MAX_VOXELS = 2048 * 2048 * 4096


#: no CT, MR or OCT frame is wider than this; larger Rows/Columns are corrupt headers
MAX_SIDE = 8192


def header_text(ds: Dataset, name: str, default: str = "") -> str:
    value = ds.get(name, default)
    return default if value is None else str(value)


def display_path(path: Path, root: Path | None) -> str:
    """A file as the user finds it: relative to ``root`` (the images folder) when given."""
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return Path(path).name


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames as the header gives it (1 when absent or unreadable: decoding the pixels says more)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (ValueError, TypeError):
        return 1


def frame_geometry(ds: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ImagePositionPatient, ImageOrientationPatient)`` of each frame, from the header alone
    (classic files: the file's; multi-frame: the functional groups'); frames lacking them are left out."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out = []
    # one entry per per-frame group (frames without one share the top-level or shared geometry);
    # never a loop over a header's NumberOfFrames, which a corrupt file can set to billions
    for f in range(len(per_frame) if per_frame else 1):
        groups = per_frame[f] if per_frame else None
        try:
            ipp = _functional(ds, groups, "PlanePositionSequence", "ImagePositionPatient")
            iop = _functional(ds, groups, "PlaneOrientationSequence", "ImageOrientationPatient")
            if ipp is None or iop is None:
                continue
            ipp, iop = np.asarray(ipp, dtype=float), np.asarray(iop, dtype=float)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            continue
        if ipp.shape == (3,) and iop.shape == (6,) and np.isfinite(ipp).all() and np.isfinite(iop).all():
            out.append((ipp, iop))
    return out


def _rescale(ds: Dataset, frame_groups: Dataset | None = None) -> tuple[float, float]:
    """(slope, intercept) from the frame's, the shared, or the top-level Pixel Value Transformation."""
    slope = _functional(ds, frame_groups, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _functional(ds, frame_groups, "PixelValueTransformationSequence", "RescaleIntercept")
    return float(slope or 1), float(intercept or 0)


def _functional(ds: Dataset, groups: Dataset | None, seq: str, attr: str) -> Any:
    """An attribute from a per-frame group, else the shared group, else the top level."""
    shared_groups = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    for source in (groups, shared):
        if source is not None and seq in source and attr in source[seq].value[0]:
            return source[seq].value[0][attr].value
    return ds.get(attr)


@dataclasses.dataclass
class Slice:
    pixels: np.ndarray  # (rows, cols) float32, rescaled
    ipp: np.ndarray
    iop: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns)
    source: Path
    instance: int | None = None  # InstanceNumber of a single-frame file


def slices_from_file(path: Path, frame_order_fallback: bool = False, header: Dataset | None = None,
                      root: Path | None = None) -> tuple[list[Slice], str]:
    """Every frame of one file as a rescaled slice with its geometry; returns them and a note
    (non-empty when ``frame_order_fallback`` placed frames that carried no usable positions).
    ``header``: the file's dataset as :func:`read_header` gave it (not parsed again); errors name
    the file relative to ``root`` when given."""
    name = display_path(path, root)
    try:
        ds = header if header is not None else pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a per-file input error
        raise InputError(f"{name}: unreadable DICOM ({e.__class__.__name__}: {e})") from None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = frame_count(ds)
    if rows > MAX_SIDE or cols > MAX_SIDE or rows * cols * n_frames > MAX_VOXELS:
        # refused from the header, before any pixel buffer is allocated
        raise InputError(f"{name}: absurd dimensions {rows}x{cols}x{n_frames} (limit {MAX_SIDE} per side, {MAX_VOXELS} voxels)")
    mosaic = _mosaic_images(ds)
    if mosaic:
        raise InputError(f"{name}: Siemens mosaic ({mosaic} images tiled in one {rows}x{cols} frame); medalign does not "
                         f"de-mosaic: convert the series with dcm2niix and prepare the NIfTI")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        size = Path(path).stat().st_size
        raise InputError(f"{name}: no pixel data (the file ends after {size:,} bytes: truncated, or not an image)")
    short = _pixel_bytes_missing(ds, rows, cols, n_frames)
    if short:
        raise InputError(f"{name}: truncated: {short[0]:,} of {short[1]:,} pixel bytes")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - truncated data, missing decoder plugin, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"{name}: cannot decode pixel data ({e.__class__.__name__}: {first})") from None
    if n_frames == 1:
        pixels = pixels[None]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frame_groups = [per_frame[f] if per_frame is not None and len(per_frame) > f else None for f in range(n_frames)]
    geometry = frame_geometry(ds)
    note = ""
    if n_frames > 1 and _frame_positions_unusable(geometry, n_frames):
        if not frame_order_fallback:
            raise InputError(f"{name}: frames lack distinct ImagePositionPatient (series.on_missing_frame_positions: frame_order stacks them)")
        geometry, note = _positions_from_frame_order(ds, frame_groups, geometry, path)
    if len(geometry) != n_frames:
        raise InputError(f"{name}: no usable ImagePositionPatient/ImageOrientationPatient")
    instance = None
    if n_frames == 1:
        try:
            instance = int(ds.get("InstanceNumber"))
        except (TypeError, ValueError):
            pass
    out = []
    for f, groups in enumerate(frame_groups):
        ps = _functional(ds, groups, "PixelMeasuresSequence", "PixelSpacing")
        if ps is None:
            raise InputError(f"{name}: frame {f} lacks PixelSpacing")
        slope, intercept = _rescale(ds, groups)
        ipp, iop = geometry[f]
        out.append(Slice(pixels=_to_float_units(pixels[f], slope, intercept), ipp=ipp, iop=iop,
                          spacing=(float(ps[0]), float(ps[1])), source=path, instance=instance))
    return out, note


def _mosaic_images(ds: Dataset) -> int:
    """How many images a Siemens mosaic tiles into its one frame (0: not a mosaic)."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    count = ds.get((0x0019, 0x100A))  # Siemens NumberOfImagesInMosaic (private)
    try:
        n = int(count.value) if count is not None else 0
    except (TypeError, ValueError):
        n = 0
    if n > 1 or "MOSAIC" in image_type:
        return max(n, 2)
    return 0


def _pixel_bytes_missing(ds: Dataset, rows: int, cols: int, n_frames: int) -> tuple[int, int] | None:
    """``(bytes present, bytes needed)`` when uncompressed pixel data is shorter than its header says."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return None  # encapsulated: the decoder finds the cut
    try:
        data = ds.PixelData
    except Exception:  # noqa: BLE001 - the deferred read hit the end of the file
        data = b""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    needed = rows * cols * n_frames * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
    return (len(data), needed) if data is not None and len(data) < needed else None


def _to_float_units(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """``(rows, cols)`` stored values to float32 in the modality's units (HU for CT), in one buffer."""
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _orientation_usable(iop: np.ndarray) -> bool:
    """Row and column cosines that span a plane (not zeroed, not parallel)."""
    return float(np.linalg.norm(np.cross(iop[:3], iop[3:]))) >= 0.5


def _frame_positions_unusable(geometry: list[tuple[np.ndarray, np.ndarray]], n_frames: int) -> bool:
    """True when some frame carries no position or orientation (``geometry`` is :func:`frame_geometry`),
    an orientation is degenerate, or all frames share one position."""
    if len(geometry) != n_frames or not all(_orientation_usable(iop) for _, iop in geometry):
        return True
    positions = np.stack([ipp for ipp, _ in geometry])
    return bool(np.allclose(positions, positions[0], atol=1e-3))


def _positions_from_frame_order(ds: Dataset, frame_groups: list[Dataset | None], geometry: list[tuple[np.ndarray, np.ndarray]],
                                path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Frame geometry for a multi-frame object without usable positions: frames in InStackPositionNumber
    order (else stored order), ``step`` mm apart along the normal, from SpacingBetweenSlices or
    SliceThickness; the first frame's orientation when usable, else rows along x, columns along y."""
    step = None
    for attr in ("SpacingBetweenSlices", "SliceThickness"):
        value = _functional(ds, frame_groups[0], "PixelMeasuresSequence", attr)
        if value is not None and float(value) > 0:
            step = float(value)
            break
    if step is None:
        raise InputError(f"{path.name}: frames lack positions and neither SpacingBetweenSlices nor SliceThickness gives their spacing")
    iop = geometry[0][1] if geometry and _orientation_usable(geometry[0][1]) else np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    normal = np.cross(iop[:3], iop[3:])
    order = []
    for f, groups in enumerate(frame_groups):
        content = groups.get("FrameContentSequence") if groups is not None else None
        stack_pos = content[0].get("InStackPositionNumber") if content else None
        order.append(int(stack_pos) if stack_pos is not None else f + 1)
    if len(set(order)) != len(order):
        order = list(range(1, len(frame_groups) + 1))  # repeated stack positions: stored order
    rank = {f: r for r, f in enumerate(np.argsort(order, kind="stable"))}
    note = f"frames without usable positions stacked in frame order at {step:.3g} mm"
    return [(rank[f] * step * normal, iop) for f in range(len(frame_groups))], note


def sort_slices_by_position(slices: list[Slice]) -> tuple[list[Slice], np.ndarray]:
    """Order slices along the normal of their shared orientation; returns slices and positions (mm)."""
    iop = slices[0].iop
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([float(np.dot(s.ipp, normal)) for s in slices])
    order = np.argsort(positions, kind="stable")
    return [slices[i] for i in order], positions[order]


def volume_from_slices(slices: list[Slice], policy: SeriesSelection | None = None) -> Volume:
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
    array = np.stack([s.pixels.T for s in slices], axis=-1)  # (cols, rows, Z), C order: the transforms run faster on it
    if not np.isfinite(array).all():
        raise InputError("volume holds NaN or infinite values")
    return Volume(array=array, affine=LPS_TO_RAS @ lps, source="dicom",
                  geometry_note=note if len(slices) > 1 else "")


def _resample_to_regular_grid(slices: list[Slice], positions: np.ndarray, step: float) -> tuple[list[Slice], str]:
    """Linear interpolation along the normal onto positions ``p0 + j * step`` (fills missing slices)."""
    n_new = int(round((positions[-1] - positions[0]) / step)) + 1
    targets = positions[0] + step * np.arange(n_new)
    out = []
    for q in targets:
        k = int(np.clip(np.searchsorted(positions, q) - 1, 0, len(slices) - 2))
        w = float(np.clip((q - positions[k]) / (positions[k + 1] - positions[k]), 0.0, 1.0))
        a, b = slices[k], slices[k + 1]
        out.append(Slice(
            pixels=((1 - w) * a.pixels + w * b.pixels).astype(np.float32),
            ipp=(1 - w) * a.ipp + w * b.ipp,
            iop=a.iop,
            spacing=a.spacing,
            source=a.source if w < 0.5 else b.source,
        ))
    return out, f"uneven slice spacing: {len(slices)} slices resampled to {n_new} at {step:.2f} mm"


def in_plane_drift(slices: list[Slice]) -> np.ndarray:
    """``(N, 2)`` how far each slice's origin lies from the first one's normal line, in pixels
    (rows, columns): zero for an orthogonal stack, growing steadily under gantry tilt."""
    row_cos, col_cos = slices[0].iop[:3], slices[0].iop[3:]
    d = np.stack([s.ipp - slices[0].ipp for s in slices])
    return np.stack([d @ col_cos / slices[0].spacing[0], d @ row_cos / slices[0].spacing[1]], axis=1)


def correct_gantry_tilt(slices: list[Slice], drift: np.ndarray) -> tuple[list[Slice], str]:
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


def instance_number_gap(slices: list[Slice], root: Path | None = None) -> str:
    """A message naming the missing instances when the slices' InstanceNumbers, read in position
    order, count up (or down) one by one except where some are missing: files that did not reach the
    export, said as such rather than as uneven spacing; "" otherwise. Series numbered in any other
    way (repeats, strides, random numbers) are not judged."""
    numbers = [s.instance for s in slices]
    if len(slices) < 3 or None in numbers or len(set(numbers)) != len(numbers):
        return ""
    ordered, _ = sort_slices_by_position(list(slices))
    steps = np.diff([s.instance for s in ordered])
    if not (np.all(steps > 0) or np.all(steps < 0)):
        return ""
    steps = np.abs(steps)
    if np.sum(steps != 1) > max(1.0, 0.2 * len(steps)) or np.all(steps == 1):
        return ""  # numbered in strides, or complete
    k = int(np.argmax(steps > 1))
    a, b = sorted((ordered[k], ordered[k + 1]), key=lambda s: s.instance)
    missing = int(steps.sum() - len(steps))
    return (f"gap in InstanceNumber: {missing} instance{'s' if missing > 1 else ''} missing between "
            f"{a.instance} ({display_path(a.source, root)}) and {b.instance} ({display_path(b.source, root)}): files lost from the export?")
