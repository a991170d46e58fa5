"""The prep preset a folder gets when ``--config`` is not given, and why."""

from __future__ import annotations

from pathlib import Path

#: DICOM Manufacturer of medalign's own phantom (``medalign synth``): only it gets the 2-core demo presets
PHANTOM_MANUFACTURER = "medalign phantom"
#: the prep and pretrain preset of each modality's demo, and what prep gives the phantom without --config
#: (CT at 5 mm over the body's box with the finding head: issue 29)
DEMO_PRESETS = {"ct": "demo_ct_5mm", "oct": "demo_oct"}


def default_prep_preset(images: Path) -> tuple[str, str]:
    """The preset ``prep`` takes without ``--config`` and why: ``oct`` for OCT (a registered OCT file
    format, or DICOM OPT/OCT objects), ``chest_ct`` otherwise; the 2-core demo presets (8 mm voxels)
    only for medalign's own phantom, never for hospital data. Reads at most 2000 paths."""
    from medalign.io.dicom import read_header
    from medalign.io.readers import reader_for

    for n, p in enumerate(sorted(Path(images).rglob("*"))):
        if n > 2000:
            break
        reader = reader_for(p)
        if reader is not None and reader.modality == "OCT":
            return "oct", f"OCT files found ({reader.description})"
        if reader is None and p.is_file():
            ds = read_header(p)
            if ds is not None and "Rows" in ds:
                oct_ = str(ds.get("Modality", "")).upper() in ("OPT", "OCT")
                if str(ds.get("Manufacturer", "")) == PHANTOM_MANUFACTURER:
                    return DEMO_PRESETS["oct" if oct_ else "ct"], "medalign's phantom"
                return ("oct", "OCT images found") if oct_ else ("chest_ct", "CT or other DICOM images found")
    return "chest_ct", "no DICOM found (NIfTI)"
