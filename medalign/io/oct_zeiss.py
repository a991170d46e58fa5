"""Zeiss Cirrus HD-OCT ``.img`` exports (``<id>_Macular Cube 512x128_<date>_OD_sn<n>_cube_z.img``).

The file is headerless 8-bit pixels, read with oct-converter's ``IMG`` reader. Everything else
comes from the file *name*, which Cirrus writes: the scan protocol (so the B-scan size and count)
and the eye. The protocol also fixes the geometry, which Zeiss publishes per protocol (a 6 x 6 mm
cube, 2.0 mm deep in 1024 samples); a name without a known cube protocol is refused rather than
guessed. The name's patient id and date are never copied: medalign names the study after the file,
so ``prep --hash-ids`` is the way to prepare Cirrus exports.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.readers import register_reader
from medalign.io.volume import Volume

#: Cirrus cube protocols: (A-scans per B-scan, B-scans, scan width mm, scan height mm) by name
CIRRUS_CUBES = {
    "macular cube 512x128": (512, 128, 6.0, 6.0),
    "macular cube 200x200": (200, 200, 6.0, 6.0),
    "optic disc cube 200x200": (200, 200, 6.0, 6.0),
}
#: every Cirrus cube: 1024 samples over 2.0 mm of tissue
CIRRUS_DEPTH_SAMPLES, CIRRUS_DEPTH_MM = 1024, 2.0
_EYE = re.compile(r"(?<![A-Za-z])(OD|OS)(?![A-Za-z])")
#: what Cirrus writes into an export's name besides protocol and eye: patient id, scan date and time, serial
_IDENTIFIERS = re.compile(r"^P\d+|\d{1,2}-\d{1,2}-\d{4}|(?<![A-Za-z])sn\d+")


def is_zeiss_img(path: Path) -> bool:
    """An ``.img`` file that is not half of an Analyze ``.hdr``/``.img`` pair."""
    path = Path(path)
    return path.suffix.lower() == ".img" and not any(path.with_suffix(s).exists() for s in (".hdr", ".HDR"))


def cirrus_protocol(filename: str) -> tuple[str, tuple[int, int, float, float]] | None:
    """The Cirrus cube protocol a file name names (``("macular cube 512x128", (512, 128, 6.0, 6.0))``), or None."""
    lower = " ".join(filename.lower().replace("_", " ").split())
    for protocol, geometry in CIRRUS_CUBES.items():
        if protocol in lower:
            return protocol, geometry
    return None


def names_identifiers(filename: str) -> bool:
    """Whether a Cirrus export name still holds what Cirrus writes into it (``P<patient id>``, the
    scan date, the serial number): a study named after it would carry them into every output."""
    return bool(_IDENTIFIERS.search(filename))


def load_zeiss_img(path: Path, name: str | None = None) -> Volume:
    """A Cirrus cube ``.img`` as a :class:`Volume` ``(A-scans, depth, B-scans)`` in [0, 1], laid out as
    the ``.vol`` reader lays one out, with the protocol's geometry; ``geometry_note`` says
    where geometry and eye came from."""
    path = Path(path)
    name = name or path.name
    found = cirrus_protocol(path.name)
    if found is None:
        known = ", ".join(sorted(CIRRUS_CUBES))
        raise InputError(f"{name}: a Zeiss .img holds no header, and its file name names no Cirrus cube protocol ({known}); "
                         "keep Cirrus's export name")
    protocol, (width, n, width_mm, height_mm) = found
    expected = CIRRUS_DEPTH_SAMPLES * width * n
    size = path.stat().st_size
    if size != expected:
        raise InputError(f"{name}: {size} bytes, where a {protocol} scan is {expected} "
                         f"({n} B-scans of {width}x{CIRRUS_DEPTH_SAMPLES}); cut short or another protocol")
    try:
        from oct_converter.readers import IMG
    except ImportError as e:  # oct-converter missing, or OpenCV beneath it without libGL.so.1
        raise InputError(f"{name}: reading Zeiss .img needs oct-converter, which failed to import ({e})") from None
    scan = IMG(path).read_oct_volume(rows=CIRRUS_DEPTH_SAMPLES, cols=width)
    stack = np.stack(scan.volume, axis=-1)  # (depth, A-scans, B-scans)
    array = np.ascontiguousarray(stack.transpose(1, 0, 2), dtype=np.float32) / 255.0
    eyes = set(_EYE.findall(path.stem))
    laterality = eyes.pop() if len(eyes) == 1 else ""
    note = (f"no header: geometry from the file name's protocol ({protocol}: {width_mm:g} x {height_mm:g} mm, "
            f"{CIRRUS_DEPTH_MM:g} mm deep, Zeiss's specification)" + ("" if laterality else "; eye not in the file name"))
    info = {"source": "zeiss-img", "manufacturer": "Carl Zeiss Meditec", "modality": "OCT", "laterality": laterality, "scan_pattern": "volume", "geometry_note": note}
    affine = np.diag([width_mm / width, CIRRUS_DEPTH_MM / CIRRUS_DEPTH_SAMPLES, height_mm / n, 1.0])
    return Volume(array=array, affine=affine, **info)


@register_reader("zeiss-img", suffixes=(".img",), description="Zeiss .img", modality="OCT", sniff=is_zeiss_img,
                 names_identifiers=names_identifiers)
def read_zeiss_img(path: Path, name: str) -> list[Volume]:
    """The registry's entry for Cirrus ``.img``: the file's one cube (:func:`load_zeiss_img`)."""
    return [load_zeiss_img(path, name)]
