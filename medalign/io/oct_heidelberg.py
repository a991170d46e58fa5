"""Heidelberg retinal OCT: Spectralis ``.vol`` (HSF-OCT-103) and Heidelberg Eye Explorer ``.e2e``
(Topcon: :mod:`medalign.io.oct_topcon`, Zeiss: :mod:`medalign.io.oct_zeiss`; all found through
:mod:`medalign.io.readers`).

Heidelberg files are read with eyepy's parsers (``eyepy.io.he``), the readers the field uses;
oct-converter has no ``.vol`` reader. Only geometry, laterality and the pixel data are taken from a
file: its patient fields (names, PatientID, birth date, visit id and date) are never copied anywhere.

The volume is laid out as the DICOM OPT path lays it out: ``(lateral A-scan position, depth,
B-scan)``, with the spacings the file states (``ScaleX`` between A-scans, ``ScaleZ`` axial,
``Distance`` between B-scans) on the affine's diagonal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.readers import register_reader
from medalign.io.volume import Volume

#: HSF-OCT scan patterns (Heidelberg's numbering)
SCAN_PATTERNS = {1: "line", 2: "circle", 3: "volume", 4: "fast volume", 5: "star", 6: "radial"}
#: values above this mark invalid pixels in a .vol B-scan (the format writes 3.4e38)
_INVALID = 1e30


def load_heyex_vol(path: Path, name: str | None = None) -> Volume:
    """A Spectralis ``.vol`` file as a :class:`Volume` ``(A-scans, depth, B-scans)`` in [0, 1] with its
    laterality (``OD``/``OS``), scan pattern and a note on any geometry the file leaves open;
    ``localizer`` is the SLO fundus image ``(H, W)`` when present (``localizer_spacing``: its pixel size
    in mm, column then row). ``name``: the file as errors should name it."""
    name = name or Path(path).name
    try:
        from eyepy.io.he.vol_reader import HeVolReader

        parsed = HeVolReader(Path(path)).parsed_file
        bscans = [np.asarray(b.data, dtype=np.float32) for b in parsed.bscans]
        header = {k: parsed[k] for k in ("size_x", "n_bscans", "size_y", "scale_x", "distance", "scale_y", "scan_position",
                                         "scan_pattern", "version", "scale_x_slo", "scale_y_slo")}
        localizer = np.asarray(parsed.localizer, dtype=np.float32) if parsed.get("localizer") is not None else None
    except ImportError:
        raise InputError(f"{name}: reading Heidelberg .vol needs eyepy (pip install eyepy)") from None
    except Exception as e:  # noqa: BLE001 - a cut or foreign file: the user needs the file and the reason
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise InputError(f"{name}: unreadable Heidelberg .vol, cut short or damaged ({e.__class__.__name__}: {first})") from None
    if not str(header["version"]).startswith("HSF-OCT-"):
        raise InputError(f"{name}: not a Heidelberg .vol file (version {header['version']!r})")
    n, depth, width = int(header["n_bscans"]), int(header["size_y"]), int(header["size_x"])
    if n < 1 or len(bscans) != n or any(b.shape != (depth, width) for b in bscans):
        raise InputError(f"{name}: truncated Heidelberg .vol ({len(bscans)} of {n} B-scans of {depth}x{width})")
    stack = np.stack(bscans, axis=-1)  # (depth, A-scans, B-scans)
    stack = np.where(stack > _INVALID, 0.0, stack).astype(np.float32)
    array = np.ascontiguousarray(stack.transpose(1, 0, 2))  # (A-scans, depth, B-scans), as the DICOM OPT path
    dx, dz = float(header["scale_x"]), float(header["scale_y"])
    if not (dx > 0 and dz > 0):
        raise InputError(f"{name}: the .vol header gives no A-scan or axial spacing (ScaleX {dx}, ScaleZ {dz})")
    pattern = SCAN_PATTERNS.get(int(header["scan_pattern"]), f"pattern {header['scan_pattern']}")
    notes = []
    dy = float(header["distance"])
    if n == 1:
        dy = dx  # one B-scan: the slow axis has one sample; its size is the A-scan spacing
        notes.append("one B-scan: its slice thickness is taken as the A-scan spacing")
    elif not dy > 0:
        raise InputError(f"{name}: {n} B-scans but no distance between them in the header")
    if pattern == "circle":
        notes.append("circle scan: the lateral axis runs along the circle, unrolled")
    laterality = str(header["scan_position"]).strip().upper()[:2]
    info = {"source": "heidelberg-vol", "manufacturer": "Heidelberg Engineering", "modality": "OCT", "laterality": laterality if laterality in ("OD", "OS") else "",
            "scan_pattern": pattern}
    if notes:
        info["geometry_note"] = "; ".join(notes)
    if localizer is not None and localizer.size:
        info["localizer"] = localizer
        info["localizer_spacing"] = (float(header["scale_x_slo"]), float(header["scale_y_slo"]))
    return Volume(array=array, affine=np.diag([dx, dz, dy, 1.0]), **info)


#: laterality codes of an E2E file (ASCII "R" and "L")
_E2E_EYE = {82: "OD", 76: "OS"}


def load_heyex_e2e(path: Path, name: str | None = None) -> list[Volume]:
    """Each OCT series of a Heidelberg ``.e2e`` file as a :class:`Volume` ``(A-scans, depth, B-scans)``,
    laid out as :func:`load_heyex_vol` lays a ``.vol`` out.

    The file gives the axial spacing in mm (``scale_y`` of each B-scan's metadata) but the lateral
    extent in degrees of scan angle: A-scan spacing and B-scan distance are those angles times
    eyepy's standard-eye factor (µm per degree), as Heidelberg's own viewer does without an axial
    length; ``geometry_note`` says so. A file holding scans of both eyes is refused (one
    study is one eye), and so is a radial (star) scan, whose B-scans do not stack into a volume."""
    name = name or Path(path).name
    try:
        from eyepy.io.he.e2e_format import TypesEnum
        from eyepy.io.he.e2e_reader import MEDIUM_EYE_LENGTH_UM_PER_DEG, HeE2eReader
    except ImportError:
        raise InputError(f"{name}: reading Heidelberg .e2e needs eyepy (pip install eyepy)") from None
    mm_per_degree = MEDIUM_EYE_LENGTH_UM_PER_DEG / 1000.0
    scans = []
    try:
        with HeE2eReader(Path(path)) as reader:
            for series in reader.series:
                slices = [series.slices[k] for k in sorted(series.slices)]
                slices = [s for s in slices if TypesEnum.bscanmeta in s.folders and TypesEnum.image in s.folders]
                if not slices:
                    continue  # fundus images only: no volume
                metas = [s.get_meta() for s in slices]
                bscans = [np.asarray(s.get_bscan(), dtype=np.float32) for s in slices]
                eye = series.folders.get(TypesEnum.laterality)
                laterality = _E2E_EYE.get(int(eye[0].data.laterality), "") if eye else ""
                localizer = None
                if TypesEnum.image in series.folders:
                    localizer = np.asarray(series.get_localizer().data, dtype=np.float32)
                scans.append((metas, bscans, laterality, localizer))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a cut or foreign file: the user needs the file and the reason
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise InputError(f"{name}: unreadable Heidelberg .e2e, cut short or damaged ({e.__class__.__name__}: {first})") from None
    if not scans:
        raise InputError(f"{name}: no OCT B-scans in this Heidelberg .e2e (fundus images only)")
    eyes = sorted({laterality for _, _, laterality, _ in scans if laterality})
    if len(eyes) > 1:
        raise InputError(f"{name}: scans of both eyes in one .e2e file; one study is one eye (export one file per eye)")
    volumes = []
    for k, (metas, bscans, laterality, localizer) in enumerate(scans):
        where = f"{name} (scan {k + 1})" if len(scans) > 1 else name
        first = metas[0]
        depth, width = int(first["size_y"]), int(first["size_x"])
        if any(b.shape != (depth, width) for b in bscans):
            raise InputError(f"{where}: B-scans of different sizes (the header says {depth}x{width})")
        pattern = SCAN_PATTERNS.get(int(first["scan_pattern"]), f"pattern {first['scan_pattern']}")
        if pattern in ("star", "radial"):
            raise InputError(f"{where}: a {pattern} scan's B-scans cross at the fovea and do not stack into a volume")
        dz = float(first["scale_y"])
        angle = abs(float(first["end_x"]) - float(first["start_x"]))
        used = int(first["imgSizeWidth"]) or width
        dx = angle / used * mm_per_degree
        if not (dz > 0 and dx > 0):
            raise InputError(f"{where}: the .e2e metadata gives no axial spacing or scan angle (scale_y {dz}, {angle} degrees)")
        notes = [f"A-scan spacing and B-scan distance from the scan angles at eyepy's standard eye "
                 f"({MEDIUM_EYE_LENGTH_UM_PER_DEG:g} µm per degree); axial spacing from the file"]
        n = len(bscans)
        if n == 1:
            dy = dx
            notes.append("one B-scan: its slice thickness is taken as the A-scan spacing")
        else:
            centres = np.array([float(m["center_y"]) for m in metas])
            steps = np.abs(np.diff(centres))
            dy = float(np.median(steps)) * mm_per_degree
            if not dy > 0:
                raise InputError(f"{where}: {n} B-scans at one position (no distance between them in the metadata)")
        if pattern == "circle":
            notes.append("circle scan: the lateral axis runs along the circle, unrolled")
        stack = np.stack(bscans, axis=-1)  # (depth, A-scans, B-scans)
        array = np.ascontiguousarray(np.nan_to_num(stack, nan=0.0, posinf=0.0).transpose(1, 0, 2))
        info = {"source": "heidelberg-e2e", "manufacturer": "Heidelberg Engineering", "modality": "OCT", "laterality": laterality, "scan_pattern": pattern,
                "geometry_note": "; ".join(notes)}
        if localizer is not None and localizer.size:
            info["localizer"] = localizer
            # eyepy's E2E reader takes the fundus image as a 30-degree field (the file does not say)
            info["geometry_note"] += "; the fundus image taken as a 30-degree field"
            info["localizer_spacing"] = (30.0 / localizer.shape[1] * mm_per_degree, 30.0 / localizer.shape[0] * mm_per_degree)
        volumes.append(Volume(array=array, affine=np.diag([dx, dz, dy, 1.0]), **info))
    return volumes


@register_reader("heidelberg-vol", suffixes=(".vol",), description="Heidelberg .vol", modality="OCT")
def read_heyex_vol(path: Path, name: str) -> list[Volume]:
    """The registry's entry for ``.vol``: the file's one volume (:func:`load_heyex_vol`)."""
    return [load_heyex_vol(path, name)]


@register_reader("heidelberg-e2e", suffixes=(".e2e",), description="Heidelberg .e2e", modality="OCT")
def read_heyex_e2e(path: Path, name: str) -> list[Volume]:
    """The registry's entry for ``.e2e``: every OCT series in the file (:func:`load_heyex_e2e`)."""
    return load_heyex_e2e(path, name)
