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

from medalign.errors import InputError
from medalign.io.volume import LPS_TO_RAS, SeriesSelection, Volume, acquisition_plane

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
    #: which stack of its series (0 when the series holds one geometry; see split_into_stacks)
    stack: int = 0
    #: the SeriesNumber the PACS viewer shows ("" when the header has none)
    series_number: str = ""
    plane: str = "oblique"  # from the first frame's orientation (see acquisition_plane)
    slice_step: float | None = None  # median distance between slice positions (mm), when known
    coverage_mm: float | None = None  # distance from the first to the last slice along the normal
    #: the headers read by the scan, one per file (pixel data still on disk), reused when loading
    headers: list[Dataset] = dataclasses.field(default_factory=list, repr=False)

    def describe(self) -> str:
        """One line for the log: key, modality, plane, image type, slices, step and coverage."""
        text = f"{self.name}: {self.modality or '?'} {self.plane} {'/'.join(self.image_type) or '-'}, {self.n_frames} slices"
        if self.slice_step is not None and self.coverage_mm is not None:
            text += f" at {self.slice_step:.2f} mm over {self.coverage_mm:.0f} mm"
        return text

    @property
    def name(self) -> str:
        """How logs name the series: its SeriesNumber, as a viewer shows it, and :attr:`key`."""
        return f"#{self.series_number} {self.key}" if self.series_number else self.key

    @property
    def key(self) -> str:
        """Pseudonymous short key of the series, ``KEY.S`` for its stack S>0 (no UID reaches disk)."""
        digest = hashlib.sha256(self.series_uid.encode()).hexdigest()[:12]
        return f"{digest}.{self.stack}" if self.stack else digest


def _str(ds: Dataset, name: str, default: str = "") -> str:
    value = ds.get(name, default)
    return default if value is None else str(value)


#: values larger than this are left on disk when a header is read (pixel data is read on first use)
DEFER_BYTES = 4096


def read_header(path: Path) -> Dataset | None:
    """Read a file's DICOM header, its pixel data left on disk until first used (so loading the
    chosen series later parses no header twice); ``None`` when it is not DICOM."""
    try:
        return pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


#: skip reason of a file that starts as DICOM (preamble + "DICM") and cannot be parsed: cut short or damaged
CORRUPT = "truncated or damaged DICOM (the header cannot be parsed)"


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _display(path: Path, root: Path | None) -> str:
    """A file as the user finds it: relative to ``root`` (the images folder) when given."""
    if root is not None:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return Path(path).name


def scan_series(root: Path, files: list[Path] | None = None) -> tuple[list[SeriesInfo], list[tuple[Path, str]]]:
    """Group every DICOM file under ``root`` (recursively), or the given ``files``, into series.

    Files without a SeriesInstanceUID (blanked by de-identification) are grouped by their identity
    (:func:`_blank_series_key`: frame of reference, orientation, spacing, matrix, ...), wherever they lie. A file repeating an instance already read (same SOPInstanceUID, position and frame count: PACS
    exports repeat instances) is skipped; a SOPInstanceUID reused at another position (as some
    de-identification tools leave them) is not a repeat. Returns the series and ``(file, reason)`` for files that were skipped.
    """
    groups: dict[tuple[str, str], list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped: list[tuple[Path, str]] = []
    seen_instances: dict[tuple[str, str, int], Path] = {}
    paths = sorted(files) if files is not None else sorted(p for p in Path(root).rglob("*") if p.is_file())
    for path in paths:
        if path.name.upper() == "DICOMDIR":
            skipped.append((path, "DICOMDIR index file"))
            continue
        ds = read_header(path)
        if ds is None:
            skipped.append((path, CORRUPT if _has_dicom_preamble(path) else "not a readable DICOM file"))
            continue
        sop = _str(ds, "SOPClassUID")
        meta_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if not sop and "Rows" not in ds and meta_sop and not meta_sop.startswith(NON_IMAGE_SOP_PREFIXES):
            skipped.append((path, CORRUPT))  # an image file whose dataset ends inside its first elements: cut short
            continue
        if sop.startswith(NON_IMAGE_SOP_PREFIXES) or "Rows" not in ds:
            skipped.append((path, f"non-image object (SOP class {sop or 'unknown'})"))
            continue
        instance = (_str(ds, "SOPInstanceUID"), str(ds.get("ImagePositionPatient")), _frame_count(ds))
        if instance[0] and instance in seen_instances:
            skipped.append((path, f"same SOP instance as {seen_instances[instance].name}"))
            continue
        seen_instances[instance] = path
        series_uid = _str(ds, "SeriesInstanceUID").strip() or _blank_series_key(ds, path)
        groups[(_str(ds, "StudyInstanceUID").strip(), series_uid)].append((path, ds))
    series = []
    for (study_uid, series_uid), members in groups.items():
        for stack, items in enumerate(split_into_stacks(members)):
            series.append(_series_info(study_uid, series_uid, stack, items))
    return series, skipped


#: what a series without SeriesInstanceUID is known by: the files of one series agree on all of these
#: (not AcquisitionNumber: pydicom's real gated CT5N series counts acquisitions 1 and 2 within one series)
_SERIES_IDENTITY = ("FrameOfReferenceUID", "SeriesNumber", "SeriesDescription", "ConvolutionKernel")
_SERIES_GEOMETRY = (("ImageOrientationPatient", 3), ("PixelSpacing", 4), ("SliceThickness", 3))


def _rounded(ds: Dataset, name: str, digits: int) -> str:
    value = ds.get(name)
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        return ",".join(f"{float(v):.{digits}f}" for v in values)
    except (TypeError, ValueError):
        return ""


def _blank_series_key(ds: Dataset, path: Path) -> str:
    """A series key for a file whose SeriesInstanceUID was blanked (de-identification): its identity
    (frame of reference, SeriesNumber, description, kernel) and geometry (orientation,
    pixel spacing, slice thickness) with modality, image type and matrix, so that a series scattered
    over several folders stays one series. A file that says none of these is grouped by its folder."""
    identity = [_str(ds, name).strip() for name in _SERIES_IDENTITY]
    geometry = [_rounded(ds, name, digits) for name, digits in _SERIES_GEOMETRY]
    if not any(identity + geometry):
        return f"blank:{path.parent}"
    kind = [_str(ds, "Modality"), "\\".join(str(v) for v in (ds.get("ImageType") or [])), _str(ds, "Rows"), _str(ds, "Columns")]
    return "blank:" + hashlib.sha1("|".join(identity + geometry + kind).encode("utf-8")).hexdigest()[:16]


_Member = tuple[Path, Dataset, list[tuple[np.ndarray, np.ndarray]]]  # file, header, frame geometry


def split_into_stacks(members: list[tuple[Path, Dataset]]) -> list[list[_Member]]:
    """Split one series' files into stacks of one geometry (orientation and frame size), as dcm2niix
    does: a localizer or a second orientation filed under the same SeriesInstanceUID becomes its own
    stack instead of spoiling the volume. Largest stack first; files keep their order."""
    stacks: list[tuple[np.ndarray | None, tuple[int, int], list[_Member]]] = []
    for path, ds in members:
        geometry = _frame_geometry(ds)
        iop = geometry[0][1] if geometry else None
        size = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        for other_iop, other_size, stack in stacks:
            same_iop = (iop is None) == (other_iop is None) and (iop is None or float(np.abs(iop - other_iop).max()) <= 1e-3)
            if same_iop and size == other_size:
                stack.append((path, ds, geometry))
                break
        else:
            stacks.append((iop, size, [(path, ds, geometry)]))
    return sorted((stack for _, _, stack in stacks), key=len, reverse=True)


def _series_info(study_uid: str, series_uid: str, stack: int, items: list[_Member]) -> SeriesInfo:
    """Header summary of one stack: counts, plane, slice step and coverage along the normal."""
    first = items[0][1]
    info = SeriesInfo(
        study_uid=study_uid,
        series_uid=series_uid,
        modality=_str(first, "Modality").upper(),
        sop_class_uid=_str(first, "SOPClassUID"),
        image_type=tuple(str(v).upper() for v in (first.get("ImageType") or [])),
        description=_str(first, "SeriesDescription"),
        files=[p for p, _, _ in items],
        headers=[ds for _, ds, _ in items],
        n_frames=sum(_frame_count(ds) for _, ds, _ in items),
        stack=stack,
        series_number=_str(first, "SeriesNumber").strip(),
    )
    geometry = [g for _, _, frames in items for g in frames]
    if geometry:
        info.plane = acquisition_plane(geometry[0][1])
        normal = np.cross(geometry[0][1][:3], geometry[0][1][3:])
        positions = np.sort([float(np.dot(ipp, normal)) for ipp, _ in geometry])
        if len(positions) > 1:
            info.slice_step = float(np.median(np.diff(positions)))
            info.coverage_mm = float(positions[-1] - positions[0])
    return info


def _frame_count(ds: Dataset) -> int:
    """NumberOfFrames as the header gives it (1 when absent or unreadable: decoding the pixels says more)."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (ValueError, TypeError):
        return 1


def _frame_geometry(ds: Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
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


def select_series(series: list[SeriesInfo], policy: SeriesSelection) -> tuple[SeriesInfo, str]:
    """Choose the series that becomes the study's volume; returns it and why (``policy.select: all``:
    the list of every full-coverage series, best first, and a reason for each).

    Candidates must have an allowed modality, plane and image type, and enough slices. Among
    them, those covering at least ``policy.min_coverage_fraction`` of the longest coverage
    count as full coverage; of these the thinnest slice step wins, then the most slices.
    """
    if not series:
        raise InputError("no DICOM image series found")
    rejected = []
    candidates = []
    for s in series:
        if policy.modalities and s.modality not in policy.modalities:
            rejected.append(f"{s.name}: modality {s.modality or '?'}")
        elif any(t in s.image_type for t in policy.skip_image_types):
            rejected.append(f"{s.name}: image type {'/'.join(s.image_type)}")
        elif policy.skip_secondary_capture and is_secondary_capture(s.sop_class_uid):
            rejected.append(f"{s.name}: secondary capture")
        elif policy.planes and s.plane not in policy.planes:
            rejected.append(f"{s.name}: {s.plane} plane")
        elif s.n_frames < policy.min_slices:
            rejected.append(f"{s.name}: {s.n_frames} slices < series.min_slices {policy.min_slices}")
        else:
            candidates.append(s)
    if not candidates:
        raise InputError("no usable series (" + "; ".join(rejected) + ")")
    longest = max(s.coverage_mm or 0.0 for s in candidates)
    full = [s for s in candidates if (s.coverage_mm or 0.0) >= policy.min_coverage_fraction * longest]
    rejected += [f"{s.name}: partial coverage ({s.coverage_mm or 0.0:.0f} of {longest:.0f} mm)" for s in candidates if s not in full]
    # thinnest step first (unknown steps last), then most slices, then a stable order
    full.sort(key=_thin_then_many)
    if policy.select == "all":
        others = f"; {len(series) - len(full)} other series not taken ({'; '.join(rejected)})" if rejected else ""
        return full, [f"series {s.describe()} (series.select: all, {k + 1} of {len(full)}){others}" for k, s in enumerate(full)]
    best = full[0]
    for s in full:
        if s is not best:
            why = "thicker slices" if _thin_then_many(s)[0] > _thin_then_many(best)[0] else "fewer slices or later in order"
            rejected.append(f"{s.describe()}: {why}")
    reason = f"series {best.describe()}"
    if len(series) > 1:
        reason += f"; chosen over {len(series) - 1} other series ({'; '.join(rejected)})"
    return best, reason


def _thin_then_many(s: SeriesInfo) -> tuple[float, int, str]:
    return (s.slice_step if s.slice_step is not None else np.inf, -s.n_frames, s.key)


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
class _Slice:
    pixels: np.ndarray  # (rows, cols) float32, rescaled
    ipp: np.ndarray
    iop: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns)
    source: Path
    instance: int | None = None  # InstanceNumber of a single-frame file


def _slices_from_file(path: Path, frame_order_fallback: bool = False, header: Dataset | None = None,
                      root: Path | None = None) -> tuple[list[_Slice], str]:
    """Every frame of one file as a rescaled slice with its geometry; returns them and a note
    (non-empty when ``frame_order_fallback`` placed frames that carried no usable positions).
    ``header``: the file's dataset as :func:`read_header` gave it (not parsed again); errors name
    the file relative to ``root`` when given."""
    name = _display(path, root)
    try:
        ds = header if header is not None else pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a per-file input error
        raise InputError(f"{name}: unreadable DICOM ({e.__class__.__name__}: {e})") from None
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    n_frames = _frame_count(ds)
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
    geometry = _frame_geometry(ds)
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
        out.append(_Slice(pixels=_to_float_units(pixels[f], slope, intercept), ipp=ipp, iop=iop,
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
    """True when some frame carries no position or orientation (``geometry`` is :func:`_frame_geometry`),
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
    array = np.stack([s.pixels.T for s in slices], axis=-1)  # (cols, rows, Z), C order: the transforms run faster on it
    if not np.isfinite(array).all():
        raise InputError("volume holds NaN or infinite values")
    return Volume(array=array, affine=LPS_TO_RAS @ lps, source="dicom", n_slices=len(slices),
                  geometry_note=note if len(slices) > 1 else "")


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


def load_series(series: SeriesInfo, policy: SeriesSelection | None = None, root: Path | None = None) -> Volume:
    """Read every file of ``series`` (single- or multi-frame) into a :class:`Volume`; errors name
    files relative to ``root`` when given."""
    policy = policy or SeriesSelection()
    slices: list[_Slice] = []
    notes = []
    headers: list[Dataset | None] = list(series.headers) if len(series.headers) == len(series.files) else [None] * len(series.files)
    series.headers = []  # handed over: a second load reads the files again
    for k, path in enumerate(series.files):
        # each header is dropped once its frames are converted, and its pixel bytes with it
        header, headers[k] = headers[k], None
        file_slices, note = _slices_from_file(path, policy.on_missing_frame_positions == "frame_order", header, root)
        del header
        slices.extend(file_slices)
        notes.append(note)
    if len(slices) > MAX_VOXELS // max(1, slices[0].pixels.size):
        raise InputError(f"series {series.name}: absurd number of slices ({len(slices)})")
    gap = instance_number_gap(slices, root) if policy.on_uneven_spacing == "reject" else ""
    if gap:
        raise InputError(f"series {series.name}: {gap}")
    vol = volume_from_slices(slices, policy)
    note = "; ".join(n for n in [*dict.fromkeys(n for n in notes if n), vol.geometry_note] if n)
    return dataclasses.replace(vol, series_key=series.key, modality=series.modality, geometry_note=note)


def instance_number_gap(slices: list[_Slice], root: Path | None = None) -> str:
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
            f"{a.instance} ({_display(a.source, root)}) and {b.instance} ({_display(b.source, root)}): files lost from the export?")


def load_dicom_study(folder: Path, policy: SeriesSelection | None = None, files: list[Path] | None = None,
                     root: Path | None = None) -> tuple[Volume, str]:
    """Scan ``folder`` (or only ``files``, a study grouped by its DICOM identity), choose its series by
    ``policy`` and load it; returns the volume and why it was chosen. Errors name files relative to
    ``root`` (default: the folder's parent, the images folder). One volume whatever ``policy.select``."""
    policy = dataclasses.replace(policy or SeriesSelection(), select="best")
    return load_dicom_volumes(folder, policy, files, root)[0]


def load_dicom_volumes(folder: Path, policy: SeriesSelection | None = None, files: list[Path] | None = None,
                       root: Path | None = None) -> list[tuple[Volume, str]]:
    """:func:`load_dicom_study` for every series ``policy.select`` takes: one (``best``), or each
    full-coverage series (``all``), best first. One series that fails to load fails the study."""
    policy = policy or SeriesSelection()
    root = Path(root) if root is not None else Path(folder).parent  # files named as the user finds them
    series, skipped = scan_series(folder, files)
    corrupt = [p for p, why in skipped if why == CORRUPT]
    if corrupt:  # never a slice fewer without a word: a cut file fails its study
        more = f" (and {len(corrupt) - 1} more)" if len(corrupt) > 1 else ""
        raise InputError(f"{_display(corrupt[0], root)}: {CORRUPT}{more}")
    if not series:
        raise InputError(f"{folder}: no DICOM image files found")
    studies = {s.study_uid for s in series if s.study_uid}
    if len(studies) > 1:
        raise InputError(f"{folder}: {len(studies)} different studies (StudyInstanceUIDs) in one study folder; "
                         "a study folder must hold one study: move the prior(s) to folders of their own")
    chosen, reasons = select_series(series, policy)
    if policy.select != "all":
        chosen, reasons = [chosen], [reasons]
    repeats = sum(why.startswith("same SOP instance") for _, why in skipped)
    return [_load_chosen(s, reason, series, policy, root, repeats) for s, reason in zip(chosen, reasons)]


def _load_chosen(chosen: SeriesInfo, reason: str, series: list[SeriesInfo], policy: SeriesSelection, root: Path,
                 repeats: int) -> tuple[Volume, str]:
    """Load one chosen series with what preparation needs from its headers (kept in memory only)."""
    # preparation draws the study's split from the PatientID (studies of one patient share a split)
    patient_id = _str(chosen.headers[0], "PatientID").strip() if chosen.headers else ""
    manufacturer = _str(chosen.headers[0], "Manufacturer").strip() if chosen.headers else ""  # the scanner's maker, no person
    side = (_str(chosen.headers[0], "ImageLaterality") or _str(chosen.headers[0], "Laterality")).strip().upper() if chosen.headers else ""
    eye = {"R": "OD", "L": "OS"}.get(side, "") if chosen.modality in ("OPT", "OCT") else ""
    if repeats:
        reason += f"; {repeats} files repeating an instance read once"
    try:
        volume = load_series(chosen, policy, root)
    except InputError as e:
        # a gap often comes from files split off the series for their geometry: name them
        apart = sum(len(s.files) for s in series if s.series_uid == chosen.series_uid and s is not chosen)
        if apart:
            raise InputError(f"{e}; {apart} file{'s' if apart > 1 else ''} of this series set apart for another orientation or size") from None
        raise
    if volume.geometry_note:
        reason += f"; {volume.geometry_note}"
    # the model card's training-data summary counts studies per scanner maker
    return dataclasses.replace(volume, patient_id=patient_id, manufacturer=manufacturer, laterality=eye), reason
