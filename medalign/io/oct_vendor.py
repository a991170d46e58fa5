"""Retinal OCT in the device makers' formats: Heidelberg Spectralis ``.vol`` (HSF-OCT-103).

Read with eyepy's parser (``eyepy.io.he.vol_reader``), the reader the field uses; oct-converter has
no ``.vol`` reader. Only geometry, laterality and the pixel data are taken from the file: its
patient fields (PatientID, birth date, visit id and date) are never copied anywhere.

The volume is laid out as the DICOM OPT path lays it out: ``(lateral A-scan position, depth,
B-scan)``, with the spacings the file states (``ScaleX`` between A-scans, ``ScaleZ`` axial,
``Distance`` between B-scans) on the affine's diagonal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.dicom import Volume

VENDOR_OCT_SUFFIXES = (".vol",)
#: HSF-OCT scan patterns (Heidelberg's numbering)
SCAN_PATTERNS = {1: "line", 2: "circle", 3: "volume", 4: "fast volume", 5: "star", 6: "radial"}
#: values above this mark invalid pixels in a .vol B-scan (the format writes 3.4e38)
_INVALID = 1e30


def is_vendor_oct(path: Path) -> bool:
    """A file in a vendor OCT format medalign reads."""
    return Path(path).is_file() and Path(path).suffix.lower() in VENDOR_OCT_SUFFIXES


def load_heyex_vol(path: Path, name: str | None = None) -> Volume:
    """A Spectralis ``.vol`` file as a :class:`Volume` ``(A-scans, depth, B-scans)`` in [0, 1]; ``info``
    holds laterality (``OD``/``OS``), the scan pattern and a note on any geometry the file leaves open;
    ``info["localizer"]`` is the SLO fundus image ``(H, W)`` when present (``info["localizer_spacing"]``: its
    pixel size in mm, column then row). ``name``: the file as
    errors should name it."""
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
    info = {"source": "heidelberg-vol", "modality": "OCT", "laterality": laterality if laterality in ("OD", "OS") else "",
            "scan_pattern": pattern}
    if notes:
        info["geometry_note"] = "; ".join(notes)
    if localizer is not None and localizer.size:
        info["localizer"] = localizer
        info["localizer_spacing"] = (float(header["scale_x_slo"]), float(header["scale_y_slo"]))
    return Volume(array=array, affine=np.diag([dx, dz, dy, 1.0]), info=info)


def mirror_to_right_eye(volume: Volume) -> Volume:
    """A left eye's (OS) volume mirrored along its lateral axis so the nasal side lies where a right
    eye's does; other volumes as they are."""
    if volume.info.get("laterality") != "OS":
        return volume
    info = {**volume.info, "mirrored": "left eye mirrored to right-eye orientation"}
    return Volume(array=np.ascontiguousarray(volume.array[::-1]), affine=volume.affine.copy(), info=info)
