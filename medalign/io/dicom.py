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

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medalign.errors import InputError
from medalign.io.dicom_slices import MAX_VOXELS, Slice, display_path, frame_count, frame_geometry, header_text, instance_number_gap, slices_from_file, volume_from_slices
from medalign.io.volume import SeriesSelection, Volume, acquisition_plane

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
        sop = header_text(ds, "SOPClassUID")
        meta_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if not sop and "Rows" not in ds and meta_sop and not meta_sop.startswith(NON_IMAGE_SOP_PREFIXES):
            skipped.append((path, CORRUPT))  # an image file whose dataset ends inside its first elements: cut short
            continue
        if sop.startswith(NON_IMAGE_SOP_PREFIXES) or "Rows" not in ds:
            skipped.append((path, f"non-image object (SOP class {sop or 'unknown'})"))
            continue
        instance = (header_text(ds, "SOPInstanceUID"), str(ds.get("ImagePositionPatient")), frame_count(ds))
        if instance[0] and instance in seen_instances:
            skipped.append((path, f"same SOP instance as {seen_instances[instance].name}"))
            continue
        seen_instances[instance] = path
        series_uid = header_text(ds, "SeriesInstanceUID").strip() or _blank_series_key(ds, path)
        groups[(header_text(ds, "StudyInstanceUID").strip(), series_uid)].append((path, ds))
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
    identity = [header_text(ds, name).strip() for name in _SERIES_IDENTITY]
    geometry = [_rounded(ds, name, digits) for name, digits in _SERIES_GEOMETRY]
    if not any(identity + geometry):
        return f"blank:{path.parent}"
    kind = [header_text(ds, "Modality"), "\\".join(str(v) for v in (ds.get("ImageType") or [])), header_text(ds, "Rows"), header_text(ds, "Columns")]
    return "blank:" + hashlib.sha1("|".join(identity + geometry + kind).encode("utf-8")).hexdigest()[:16]


_Member = tuple[Path, Dataset, list[tuple[np.ndarray, np.ndarray]]]  # file, header, frame geometry


def split_into_stacks(members: list[tuple[Path, Dataset]]) -> list[list[_Member]]:
    """Split one series' files into stacks of one geometry (orientation and frame size), as dcm2niix
    does: a localizer or a second orientation filed under the same SeriesInstanceUID becomes its own
    stack instead of spoiling the volume. Largest stack first; files keep their order."""
    stacks: list[tuple[np.ndarray | None, tuple[int, int], list[_Member]]] = []
    for path, ds in members:
        geometry = frame_geometry(ds)
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
        modality=header_text(first, "Modality").upper(),
        sop_class_uid=header_text(first, "SOPClassUID"),
        image_type=tuple(str(v).upper() for v in (first.get("ImageType") or [])),
        description=header_text(first, "SeriesDescription"),
        files=[p for p, _, _ in items],
        headers=[ds for _, ds, _ in items],
        n_frames=sum(frame_count(ds) for _, ds, _ in items),
        stack=stack,
        series_number=header_text(first, "SeriesNumber").strip(),
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


def load_series(series: SeriesInfo, policy: SeriesSelection | None = None, root: Path | None = None) -> Volume:
    """Read every file of ``series`` (single- or multi-frame) into a :class:`Volume`; errors name
    files relative to ``root`` when given."""
    policy = policy or SeriesSelection()
    slices: list[Slice] = []
    notes = []
    headers: list[Dataset | None] = list(series.headers) if len(series.headers) == len(series.files) else [None] * len(series.files)
    series.headers = []  # handed over: a second load reads the files again
    for k, path in enumerate(series.files):
        # each header is dropped once its frames are converted, and its pixel bytes with it
        header, headers[k] = headers[k], None
        file_slices, note = slices_from_file(path, policy.on_missing_frame_positions == "frame_order", header, root)
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
        raise InputError(f"{display_path(corrupt[0], root)}: {CORRUPT}{more}")
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
    patient_id = header_text(chosen.headers[0], "PatientID").strip() if chosen.headers else ""
    manufacturer = header_text(chosen.headers[0], "Manufacturer").strip() if chosen.headers else ""  # the scanner's maker, no person
    side = (header_text(chosen.headers[0], "ImageLaterality") or header_text(chosen.headers[0], "Laterality")).strip().upper() if chosen.headers else ""
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
