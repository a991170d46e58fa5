"""Topcon ``.fda``/``.fds`` files for the tests, built with oct-converter's own description of the
format (``oct_converter.readers.binary_structs``: construct structures that parse *and* build),
since no real Topcon file can be shipped: the 15-byte header, then named chunks as uocte documents
them (patient, capture info with the eye, scan parameters, the B-scans, a fundus image, the scan's
box on the fundus image), then the end mark.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np


def _chunk(name: bytes, payload: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack("<I", len(payload)) + payload


def write_topcon(path: Path, bscans: np.ndarray, *, eye: int = 1, size_mm=(6.0, 6.0), z_um: float = 2.6,
                 patient: dict | None = None, pixels: str = "jpeg2000", scan_mode: int = 2,
                 fundus: np.ndarray | None = None, box=(10, 12, 42, 36)) -> None:
    """Write ``bscans`` ``(n, depth, width)`` (uint8 for ``pixels="jpeg2000"``, an ``.fda``'s lossless
    ``@IMG_JPEG``; uint16 for ``"raw"``: ``@IMG_MOT_COMP_03`` in an ``.fda``, ``@IMG_SCAN_03`` in an ``.fds``)
    with the eye (0 right, 1 left), the scan size in mm, the axial resolution in µm, the patient block,
    and an optional fundus photograph ``(H, W, 3)`` uint8 placed at ``box`` (fundus pixels)."""
    from PIL import Image

    fds = Path(path).suffix.lower() == ".fds"
    if fds:
        from oct_converter.readers.binary_structs import fds_binary as b
    else:
        from oct_converter.readers.binary_structs import fda_binary as b
    n, depth, width = bscans.shape
    patient = patient or {}
    out = b.header.build(dict(file_code="FOCT", file_type="FDA", major_ver=2, minor_ver=1000))
    info = dict(patient_id=patient.get("patient_id", ""), first_name=patient.get("first_name", ""),
                last_name=patient.get("last_name", ""), mid_name="", sex=2, birth_date=patient.get("birth_date", [1950, 1, 1]),
                occup_reg=[[0] * 20] * 2, r_date=[0, 0, 0], record_id=[0] * 16, lv_date=[0, 0, 0], physician=[[0] * 64] * 2,
                zip_code=[0] * 12, addr=[[0] * 48] * 2, phones=[[0] * 16] * 2, nx_date=[0] * 6, multipurpose_field=[[0] * 20] * 3,
                descp=[0] * 64, reserved=[0] * 32)
    out += _chunk(b"@PATIENT_INFO_02", b.patient_info_02_header.build(info))
    out += _chunk(b"@CAPTURE_INFO_02", b.capture_info_02_header.build(
        dict(eye=eye, scan_mode=scan_mode, session_id=7, label="3D Macula", cap_date=[2021, 3, 4, 5, 6, 7])))
    out += _chunk(b"@PARAM_SCAN_04", b.param_scan_04_header.build(
        dict(fixation=0, mirror_pos=0, polar=0, x_dimension_mm=size_mm[0], y_dimension_mm=size_mm[1], z_resolution_um=z_um,
             comp_eff_2=0.0, comp_eff_3=0.0, base_pos=0, used_calib_data=0)))
    if pixels == "jpeg2000":
        payload = b.oct_header.build(dict(scan_mode=scan_mode, unknown1=0, unknown2=0, width=width, height=depth,
                                          number_slices=n, unknown3=0xA02))
        for s in bscans:
            buf = io.BytesIO()
            Image.fromarray(s.astype(np.uint8)).save(buf, format="JPEG2000", irreversible=False)  # lossless
            payload += struct.pack("<i", buf.tell()) + buf.getvalue()
        out += _chunk(b"@IMG_JPEG", payload)
    else:
        raw = np.ascontiguousarray(bscans.astype("<u2")).tobytes()  # B-scan by B-scan, row by row
        header = dict(scan_mode=scan_mode, width=width, height=depth, bits_per_pixel=16, number_slices=n, format=0, size=len(raw))
        name = b"@IMG_SCAN_03" if fds else b"@IMG_MOT_COMP_03"
        out += _chunk(name, b.oct_header.build(header) + raw if fds else b.oct_header_2.build(header) + raw)
    if fundus is not None:
        h, w, _ = fundus.shape
        if fds:
            bgr = np.ascontiguousarray(fundus[:, :, ::-1].transpose(2, 1, 0)).tobytes(order="F")
            out += _chunk(b"@IMG_OBS", b.fundus_header.build(dict(width=w, height=h, bits_per_pixel=24, number_slices=1, format=0,
                                                                  size=len(bgr))) + bgr)
        else:
            buf = io.BytesIO()
            Image.fromarray(fundus).save(buf, format="JPEG2000", irreversible=False)
            out += _chunk(b"@IMG_FUNDUS", b.fundus_header.build(dict(width=w, height=h, bits_per_pixel=24, number_slices=1,
                                                                     format="j2k", size=buf.tell())) + buf.getvalue())
        out += _chunk(b"@REGIST_INFO", b.regist_info_header.build(dict(**{"0x0": 0}, unknown=[0, 0], bounding_box_in_fundus_pixels=list(box),
                                                                        version="8.0.1.20198", bounding_box_in_trc_pixels=[0, 0, 0, 0])))
    Path(path).write_bytes(out + b"\x00")
