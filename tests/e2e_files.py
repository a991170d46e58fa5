"""Heidelberg ``.e2e`` files for the tests, built with eyepy's own description of the format
(``eyepy.io.he.e2e_format``: construct structures that parse *and* build), since no real E2E file
can be shipped: a version block, a main header, one chunk of folder headers and the data
containers they point to (patient, laterality, localizer and, per B-scan, its metadata and image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def encodable(values: np.ndarray) -> np.ndarray:
    """``values`` snapped to the nearest value E2E's unsigned 16-bit float can hold (its encoder
    accepts only those)."""
    from eyepy.io.he.e2e_format import Bscan

    table = np.asarray(Bscan.LUT, dtype=np.float32)
    finite = np.isfinite(table)
    order = np.argsort(table[finite])
    sorted_values = table[finite][order]
    idx = np.clip(np.searchsorted(sorted_values, values), 1, len(sorted_values) - 1)
    left, right = sorted_values[idx - 1], sorted_values[idx]
    return np.where(np.abs(values - left) <= np.abs(values - right), left, right).astype(np.float32)


def write_e2e(path: Path, series: list[dict], patient: dict) -> None:
    """Write ``series`` (each: ``bscans`` (n, depth, width) float32 from :func:`encodable`,
    ``laterality`` "OD"/"OS", ``scale_y`` mm per axial pixel, ``field_deg`` the scan's width and
    height in degrees, ``scan_pattern``, optional ``localizer`` (h, w) uint8) of one patient
    (``firstname``, ``surname``, ``patient_id``, ``birthdate``) as one ``.e2e`` file."""
    import construct as cs
    from eyepy.io.he import e2e_format as f

    containers: list[tuple[dict, bytes]] = []  # (ids and type, item bytes)

    def add(type_id: int, item: bytes, series_id: int = -1, slice_id: int = -1, ind: int = 0) -> None:
        containers.append(({"patient_id": 1, "study_id": 1 if series_id != -1 else -1, "series_id": series_id,
                            "slice_id": slice_id, "ind": ind, "type": type_id}, item))

    add(9, f.type9_format.build(f.Type9(firstname=patient["firstname"], surname=patient["surname"],
                                        birthdate=patient["birthdate"], sex="F", patient_id=patient["patient_id"])))
    for s, spec in enumerate(series, start=1):
        bscans = spec["bscans"]
        n, depth, width = bscans.shape
        laterality = f.LateralityEnum.OD if spec["laterality"] == "OD" else f.LateralityEnum.OS
        add(11, f.type11_format.build(f.Type11(unknown=bytes(14), laterality=laterality)) + bytes(12), series_id=s)
        if spec.get("localizer") is not None:
            loc = spec["localizer"]
            add(1073741824, f.type1073741824_format.build(f.Type1073741824(
                size=loc.size, type=33620481, n_values=loc.size, height=loc.shape[0], width=loc.shape[1], data=loc)), series_id=s)
        add(9007, f.type9007_format.build(f.Type9007(n_strings=2, string_size=256, text=["Infra-Red", "IR"])), series_id=s)
        x_deg, y_deg = spec["field_deg"]
        for i in range(n):
            y = -y_deg / 2 + (y_deg * i / (n - 1) if n > 1 else 0.0)
            meta = f.Type10004(
                unknown0=0, size_y=depth, size_x=width, start_x=-x_deg / 2, start_y=y, end_x=x_deg / 2, end_y=y, zero1=0,
                unknown1=0.0, scale_y=spec["scale_y"], unknown2=0.0, zero2=0, unknown3=[0.0, 0.0], zero3=0, imgSizeWidth=width,
                n_bscans=n, aktImage=i, scan_pattern=spec["scan_pattern"], center_x=0.0, center_y=y, unknown4=0,
                acquisitionTime="2020-01-02T03:04:05", numAve=16, quality=30.0, unknown5=0.0, unknown6=bytes(12), art_mode=16,
                oct_controller_fw_raw=bytes(4), oct_camera_fw_raw=bytes(4), oct_camera_fpga_raw=bytes(4), unknown7=bytes(4),
                focus_candidate_raw=0.0, unknown8=bytes(12), quality_ui=30.0, rest=bytes(428 - 172))
            add(10004, f.type10004_format.build(meta), series_id=s, slice_id=2 * i, ind=1)
            add(1073741824, f.type1073741824_format.build(f.Type1073741824(
                size=depth * width * 2, type=35652097, n_values=depth * width, height=depth, width=width, data=bscans[i])),
                series_id=s, slice_id=2 * i, ind=1)

    n = len(containers)
    version_size, header_size = f.version_format.sizeof(), f.header_format.sizeof()
    folder_size, container_header = f.folderheader_format.sizeof(), f.containerheader_format.sizeof()
    chunk_start = version_size + header_size
    data_start = chunk_start + header_size + n * folder_size
    folders, blobs, position = [], [], data_start
    for k, (ids, item) in enumerate(containers):
        folders.append(f.FolderHeader(pos=chunk_start + header_size + k * folder_size, start=position, size=len(item), unknown0=0,
                                      patient_id=ids["patient_id"], study_id=ids["study_id"], series_id=ids["series_id"],
                                      slice_id=ids["slice_id"], ind=ids["ind"], unknown1=0, type=f.TypesEnum(ids["type"]), unknown3=0))
        header = f.ContainerHeader(magic3="MDbData", unknown0=0, header_pos=folders[-1].pos, pos=position, size=len(item),
                                   unknown1=0, patient_id=ids["patient_id"], study_id=ids["study_id"], series_id=ids["series_id"],
                                   slice_id=ids["slice_id"], ind=ids["ind"], unknown2=0, type=f.TypesEnum(ids["type"]), unknown3=0)
        blobs.append(f.containerheader_format.build(header) + item)
        position += container_header + len(item)

    def header(entries: int, current: int, prev: int) -> bytes:
        return f.header_format.build(f.Header(magic2="MDbMDir", version=0x64, unknown0=[0] * 10, num_entries=entries,
                                              current=current, prev=prev, unknown1=0))

    with open(path, "wb") as out:
        out.write(f.version_format.build(f.Version(name="CMDb", version=0x64, unknown0=[0] * 10)))
        out.write(header(n, 0, chunk_start))
        out.write(header(n, chunk_start, 0))
        out.write(b"".join(cs.Array(n, f.folderheader_format).build(folders) for _ in [0]))
        out.write(b"".join(blobs))
