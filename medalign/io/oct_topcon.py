"""Topcon OCT files: ``.fda`` (3D OCT-1000/2000, Maestro) and ``.fds`` (3D OCT-1000 Mark II, the
UK Biobank's format).

The chunk layouts are oct-converter's (``oct_converter.readers.binary_structs``, from uocte's
reverse engineering). oct-converter's own ``FDA``/``FDS`` readers cannot be used: they walk the
chunk list with ``np.fromstring``'s binary mode, which NumPy 2.3 removed, so they fail on every
file under medalign's NumPy. The walk here is the one uocte documents: a 15-byte header, then
``(u8 name length, name, u32 size, data)`` chunks until a zero length.

Only pixels, geometry (``@PARAM_SCAN_04``/``02``) and the eye (``@CAPTURE_INFO_02``) are parsed;
the ``@PATIENT_INFO`` chunks (names, PatientID, birth date) are never read.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.readers import register_reader
from medalign.io.volume import Volume

#: ``@IMG_JPEG`` type field (uocte): which patterns stack into a volume
_FDA_PATTERNS = {0: "line", 2: "volume", 3: "cylindrical", 7: "7-line raster", 11: "two 5-line rasters"}
#: ``@IMG_SCAN_0x`` scan mode field (oct-converter's fds_binary)
_FDS_PATTERNS = {2: "volume", 3: "radial", 4: "cross"}
_NOT_A_VOLUME = ("cylindrical", "radial", "cross", "two 5-line rasters")
#: ``@CAPTURE_INFO_02`` eye field
_EYE = {0: "OD", 1: "OS"}


def load_topcon(path: Path, name: str | None = None) -> Volume:
    """A Topcon ``.fda``/``.fds`` file's OCT scan as a :class:`Volume` ``(A-scans, depth, B-scans)`` in
    [0, 1], laid out as the ``.vol`` reader lays one out; spacings from ``@PARAM_SCAN`` (scan width and
    height in mm over the A-scan and B-scan counts, axial resolution in µm). fields as for
    :func:`medalign.io.oct_heidelberg.load_heyex_vol`; ``localizer`` is the fundus photograph
    (``@IMG_FUNDUS``/``@IMG_OBS``, luminance in [0, 1]) when the file holds one."""
    name = name or Path(path).name
    try:
        from oct_converter.readers.binary_structs import fda_binary, fds_binary
    except ImportError as e:  # oct-converter missing, or OpenCV beneath it without libGL.so.1
        raise InputError(f"{name}: reading Topcon files needs oct-converter, which failed to import ({e})") from None
    data = Path(path).read_bytes()
    fds = Path(path).suffix.lower() == ".fds"
    structs = fds_binary if fds else fda_binary
    try:
        chunks = _chunks(data, structs)
        array, pattern = (_fds_scan if fds else _fda_scan)(data, chunks, structs)
        scan = _first(chunks, data, (b"@PARAM_SCAN_04", structs.param_scan_04_header), (b"@PARAM_SCAN_02", structs.param_scan_02_header))
        eye = _first(chunks, data, (b"@CAPTURE_INFO_02", structs.capture_info_02_header), (b"@CAPTURE_INFO", structs.capture_info_header))
        localizer = _fundus(data, chunks, structs, fds)
    except InputError as e:
        raise InputError(f"{name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a cut or foreign file: the user needs the file and the reason
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise InputError(f"{name}: unreadable Topcon {'.fds' if fds else '.fda'}, cut short or damaged ({e.__class__.__name__}: {first})") from None
    if pattern in _NOT_A_VOLUME:
        raise InputError(f"{name}: a {pattern} scan's B-scans do not stack into a volume")
    if scan is None:
        raise InputError(f"{name}: no @PARAM_SCAN chunk, so the file gives no scan size; refusing to assume one")
    width, depth, n = array.shape
    dx, dz = float(scan.x_dimension_mm) / width, float(scan.z_resolution_um) / 1000.0
    if not (dx > 0 and dz > 0):
        raise InputError(f"{name}: @PARAM_SCAN gives no scan width or axial resolution ({scan.x_dimension_mm} mm, {scan.z_resolution_um} µm)")
    notes = []
    if n == 1:
        dy = dx
        notes.append("one B-scan: its slice thickness is taken as the A-scan spacing")
    else:
        dy = float(scan.y_dimension_mm) / n
        if not dy > 0:
            raise InputError(f"{name}: {n} B-scans but @PARAM_SCAN gives no scan height ({scan.y_dimension_mm} mm)")
    laterality = _EYE.get(int(eye.eye), "") if eye is not None else ""
    info = {"source": "topcon-fds" if fds else "topcon-fda", "manufacturer": "Topcon", "modality": "OCT", "laterality": laterality, "scan_pattern": pattern}
    if eye is None:
        notes.append("no @CAPTURE_INFO chunk: eye unknown")
    elif not laterality:
        notes.append(f"eye code {eye.eye} in @CAPTURE_INFO is neither right (0) nor left (1): eye unknown")
    if localizer is not None:
        info["localizer"] = localizer
        box = _first(chunks, data, (b"@REGIST_INFO", structs.regist_info_header))
        spacing = _fundus_spacing(box, scan, pattern)
        if spacing is None:
            notes.append("the fundus image's pixel size is not in the file")
        else:
            info["localizer_spacing"] = spacing
    if notes:
        info["geometry_note"] = "; ".join(notes)
    return Volume(array=array, affine=np.diag([dx, dz, dy, 1.0]), **info)


def _chunks(data: bytes, structs) -> dict[bytes, tuple[int, int]]:
    """``{chunk name: (offset of its data, size)}``, the first of each name, after checking the header."""
    header = _header(structs.header, data, 0)
    if header.file_code != "FOCT":
        raise InputError(f"not a Topcon file (starts {data[:4]!r}, not b'FOCT')")
    chunks, at = {}, structs.header.sizeof()
    while True:
        if at >= len(data):
            raise InputError(f"cut short: the chunk list ends at byte {at} without its end mark")
        size_of_name = data[at]
        if size_of_name == 0:
            return chunks
        chunk = data[at + 1: at + 1 + size_of_name]
        (size,) = struct.unpack_from("<I", data, at + 1 + size_of_name)
        start = at + 5 + size_of_name
        if start + size > len(data):
            raise InputError(f"cut short: chunk {chunk.decode('latin-1')} runs {start + size - len(data)} bytes past the end")
        chunks.setdefault(chunk, (start, size))
        at = start + size


def _first(chunks: dict, data: bytes, *candidates):
    """The parsed first chunk of ``candidates`` (``(name, struct)``) present in the file, or None."""
    for chunk, layout in candidates:
        if chunk in chunks:
            start, size = chunks[chunk]
            return layout.parse(data[start: start + size])
    return None


def _header(layout, data: bytes, start: int):
    """A fixed-size chunk header parsed from its own bytes (slicing the rest of the file would copy it)."""
    return layout.parse(data[start: start + layout.sizeof()])


def _fda_scan(data: bytes, chunks: dict, structs) -> tuple[np.ndarray, str]:
    """The B-scans of an ``.fda`` and its scan pattern: the compressed slices of ``@IMG_JPEG`` (JPEG or
    JPEG 2000), else the raw 16-bit ``@IMG_MOT_COMP_03`` volume, oct-converter's order of preference."""
    jpeg = _first(chunks, data, (b"@IMG_JPEG", structs.oct_header))
    if jpeg is None:
        if b"@IMG_MOT_COMP_03" in chunks:
            array = _raw_volume(data, chunks[b"@IMG_MOT_COMP_03"], structs.oct_header_2)
            return array, "volume" if array.shape[2] > 1 else "line"  # this chunk's first byte is no scan type (uocte)
        raise InputError("no OCT image chunk (neither @IMG_JPEG nor @IMG_MOT_COMP_03)")
    pattern = _FDA_PATTERNS.get(int(jpeg.scan_mode), f"type {jpeg.scan_mode}")
    from PIL import Image

    start, size = chunks[b"@IMG_JPEG"]
    at, end = start + structs.oct_header.sizeof(), start + size
    slices = []
    for k in range(int(jpeg.number_slices)):
        (n,) = struct.unpack_from("<i", data, at)
        if at + 4 + n > end:
            raise InputError(f"cut short: B-scan {k + 1} of {jpeg.number_slices} runs past its chunk")
        pixels = np.asarray(Image.open(io.BytesIO(data[at + 4: at + 4 + n])))
        if pixels.shape != (jpeg.height, jpeg.width):
            raise InputError(f"B-scan {k + 1} is {pixels.shape}, the header says {jpeg.height}x{jpeg.width}")
        slices.append(pixels)
        at += 4 + n
    if not slices:
        raise InputError("@IMG_JPEG holds no B-scans")
    stack = np.stack(slices, axis=-1)  # (depth, A-scans, B-scans)
    return _unit(stack.transpose(1, 0, 2)), pattern


def _fds_scan(data: bytes, chunks: dict, structs) -> tuple[np.ndarray, str]:
    """The B-scans of an ``.fds`` (``@IMG_SCAN_03`` or ``@IMG_SCAN_02``, 16-bit raw) and its scan pattern."""
    for chunk, layout in ((b"@IMG_SCAN_03", structs.oct_header), (b"@IMG_SCAN_02", structs.oct_header_2)):
        if chunk in chunks:
            header = _header(layout, data, chunks[chunk][0])
            return _raw_volume(data, chunks[chunk], layout), _FDS_PATTERNS.get(int(header.scan_mode), f"mode {header.scan_mode}")
    raise InputError("no OCT image chunk (neither @IMG_SCAN_03 nor @IMG_SCAN_02)")


def _raw_volume(data: bytes, where: tuple[int, int], layout) -> np.ndarray:
    """A raw 16-bit volume chunk as ``(A-scans, depth, B-scans)`` in [0, 1]: stored B-scan by B-scan,
    each row by row, so the A-scan index runs fastest (Fortran order of ``(width, height, n)``)."""
    start, size = where
    header = _header(layout, data, start)
    width, height, n = int(header.width), int(header.height), int(header.number_slices)
    count = width * height * n
    offset = start + layout.sizeof()
    if count == 0 or offset + 2 * count > start + size:
        raise InputError(f"the raw volume chunk holds {size - layout.sizeof()} bytes, the header says {n} B-scans of {height}x{width} 16-bit")
    raw = np.frombuffer(data, dtype="<u2", count=count, offset=offset)
    return _unit(raw.reshape((width, height, n), order="F"))


def _unit(array: np.ndarray) -> np.ndarray:
    """Integer pixels scaled to [0, 1] by their type's range, float32, C-contiguous."""
    out = np.empty(array.shape, dtype=np.float32)  # one pass: converted, scaled and laid out C-contiguous together
    return np.divide(array, np.float32(np.iinfo(array.dtype).max), out=out)


def _fundus(data: bytes, chunks: dict, structs, fds: bool) -> np.ndarray | None:
    """The fundus photograph as luminance ``(H, W)`` in [0, 1]: ``.fda`` ``@IMG_FUNDUS`` (a compressed
    colour image), ``.fds`` ``@IMG_OBS`` (raw 8-bit BGR); None when absent."""
    chunk = b"@IMG_OBS" if fds else b"@IMG_FUNDUS"
    if chunk not in chunks:
        return None
    start, size = chunks[chunk]
    header = _header(structs.fundus_header, data, start)
    offset = start + structs.fundus_header.sizeof()
    if fds:
        count = int(header.width) * int(header.height) * 3
        if offset + count > start + size:
            raise InputError(f"@IMG_OBS holds fewer bytes than its {header.width}x{header.height} colour image")
        # stored channel-fastest, column by column (oct-converter's reading): (3, W, H) in Fortran order
        rgb = np.frombuffer(data, dtype=np.uint8, count=count, offset=offset).reshape((3, header.width, header.height), order="F")
        rgb = rgb.transpose(2, 1, 0).astype(np.float32)
    else:
        from PIL import Image

        rgb = np.asarray(Image.open(io.BytesIO(data[offset: offset + int(header.size)])).convert("RGB"), dtype=np.float32)
    return np.ascontiguousarray(rgb.mean(axis=-1) / 255.0, dtype=np.float32)


def _fundus_spacing(box, scan, pattern: str) -> tuple[float, float] | None:
    """The fundus image's pixel size in mm ``(column, row)`` from the scan's bounding box in fundus
    pixels (``@REGIST_INFO``) and the scan's size in mm; None without a rectangular box."""
    if box is None or pattern not in ("volume", "7-line raster"):
        return None
    x0, y0, x1, y1 = (int(v) for v in box.bounding_box_in_fundus_pixels)
    if x1 <= x0 or y1 <= y0:
        return None
    return float(scan.x_dimension_mm) / (x1 - x0), float(scan.y_dimension_mm) / (y1 - y0)


@register_reader("topcon-fds", suffixes=(".fds",), description="Topcon .fds", modality="OCT")
@register_reader("topcon-fda", suffixes=(".fda",), description="Topcon .fda", modality="OCT")
def read_topcon(path: Path, name: str) -> list[Volume]:
    """The registry's entry for ``.fda`` and ``.fds``: the file's one volume (:func:`load_topcon`)."""
    return [load_topcon(path, name)]
