"""The reader registry: the file formats medalign reads, each found by its suffix (and a sniff where
a suffix is shared), in the manner of MONAI's ``ImageReader`` (``verify_suffix`` / ``read``).

Each reader module registers its format with :func:`register_reader` when imported; the modules in
``BUILTIN_READERS`` are imported on the registry's first use, and another package adds formats
through a ``medalign.readers`` entry point (a module that registers on import). A study folder that
holds no registered file is read as DICOM series (:mod:`medalign.io.dicom`): DICOM files have no
reliable suffix, and their series choice has a policy of its own.

``prep`` (study discovery and reading), ``convert``, the default-preset choice and the CLI's help
all ask this registry; adding a format touches no other file.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Callable

from medalign.errors import InputError
from medalign.io.volume import Volume

log = logging.getLogger(__name__)

#: modules holding medalign's own readers (each calls :func:`register_reader` at import)
BUILTIN_READERS = ("medalign.io.nifti", "medalign.io.oct_heidelberg", "medalign.io.oct_topcon", "medalign.io.oct_zeiss")
#: entry-point group through which other packages add readers
ENTRY_POINT_GROUP = "medalign.readers"


@dataclasses.dataclass(frozen=True)
class ImageReader:
    """One file format: how to recognise a file and read every volume in it."""

    name: str
    #: lower-case file-name endings (``.nii.gz`` included): a study file is named ``<study><suffix>``
    suffixes: tuple[str, ...]
    #: ``read(path, name) -> [Volume, ...]``: every volume scan in the file; ``name``: the file as errors call it
    read: Callable[[Path, str], list[Volume]]
    #: short human name (``"Heidelberg .vol"``), used in provenance and help
    description: str
    #: what the files hold when they say nothing else: ``OCT`` picks the ``oct`` prep preset; "" decides nothing
    modality: str = ""
    #: ``sniff(path) -> bool`` where the suffix alone is not enough (Zeiss ``.img`` beside an Analyze ``.hdr``)
    sniff: Callable[[Path], bool] | None = None
    #: ``names_identifiers(file_name) -> bool``: the format's exports are named after the patient
    names_identifiers: Callable[[str], bool] | None = None

    def verify_suffix(self, path: Path) -> bool:
        """Whether ``path``'s name ends in one of this format's suffixes (case-insensitive)."""
        return Path(path).name.lower().endswith(self.suffixes)

    def study_name(self, path: Path) -> str:
        """The study id of a bare study file: its name without the format's suffix."""
        name = Path(path).name
        suffix = next(s for s in sorted(self.suffixes, key=len, reverse=True) if name.lower().endswith(s))
        return name[: -len(suffix)]


_READERS: dict[str, ImageReader] = {}
_loaded = False


def register_reader(name: str, *, suffixes: tuple[str, ...], description: str, modality: str = "",
                    sniff: Callable[[Path], bool] | None = None,
                    names_identifiers: Callable[[str], bool] | None = None) -> Callable:
    """Decorator registering ``read(path, name) -> list[Volume]`` as the reader of ``suffixes``.
    A second registration under one name replaces the first (a plugin may override a built-in)."""

    def decorate(read: Callable[[Path, str], list[Volume]]) -> Callable[[Path, str], list[Volume]]:
        _READERS[name] = ImageReader(name=name, suffixes=tuple(s.lower() for s in suffixes), read=read, description=description,
                                     modality=modality, sniff=sniff, names_identifiers=names_identifiers)
        return read

    return decorate


def _load_readers() -> None:
    """Import the built-in reader modules and the entry points' once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_READERS:
        importlib.import_module(module)
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not stop medalign's own formats
            log.warning("reader plugin %s not loaded: %s: %s", point.name, e.__class__.__name__, e)


def list_readers() -> list[str]:
    """Names of the registered readers, sorted."""
    _load_readers()
    return sorted(_READERS)


def get_reader(name: str) -> ImageReader:
    """The reader registered as ``name``."""
    _load_readers()
    if name not in _READERS:
        raise KeyError(f"no reader named {name!r}; registered: {', '.join(_READERS)}")
    return _READERS[name]


def reader_for(path: Path) -> ImageReader | None:
    """The reader of the file ``path`` (the longest matching suffix wins), or None: a folder, a DICOM
    file or a file medalign does not read."""
    _load_readers()
    path = Path(path)
    if not path.is_file():
        return None
    matches = [r for r in _READERS.values() if r.verify_suffix(path)]
    for reader in sorted(matches, key=lambda r: -max(len(s) for s in r.suffixes if path.name.lower().endswith(s))):
        if reader.sniff is None or reader.sniff(path):
            return reader
    return None


def suffix_list() -> str:
    """The registered suffixes for help text and error lines (``".nii, .nii.gz, .vol, ..."``)."""
    _load_readers()
    return ", ".join(dict.fromkeys(s for name in sorted(_READERS) for s in _READERS[name].suffixes))


def describe_scan(volume: Volume, kind: str) -> str:
    """One line of provenance for a volume read from a file: ``kind`` (the reader's description),
    then for an OCT scan its pattern, size and any geometry note."""
    note = f"; {volume.geometry_note}" if volume.geometry_note else ""
    if not volume.scan_pattern:
        return f"{kind}{note}"
    x, y, z = volume.array.shape
    return f"{kind}, {volume.scan_pattern} scan, {z} B-scans of {x} A-scans x {y}{note}"


def best_scan(volumes: list[Volume]) -> tuple[Volume, str]:
    """The scan ``series.select: best`` takes from a file holding several: the one with the most
    slices (a volume scan over a line scan), the first on a tie; and why ("" for a file of one)."""
    if not volumes:
        raise InputError("the file holds no volume")
    best = max(range(len(volumes)), key=lambda k: (volumes[k].array.shape[2], -k))
    if len(volumes) == 1:
        return volumes[0], ""
    counts = ", ".join(f"{v.scan_pattern or 'scan'} {v.array.shape[2]}" for v in volumes)
    return volumes[best], f"scan {best + 1} of {len(volumes)} in the file, the most B-scans ({counts})"


def read_volumes(path: Path, name: str | None = None) -> list[Volume]:
    """Every volume in a file of a registered format; a file of no registered format is refused."""
    return _read(path, name)[1]


def _read(path: Path, name: str | None) -> tuple[ImageReader, list[Volume]]:
    reader = reader_for(path)
    if reader is None:
        raise InputError(f"{name or path}: not a file format medalign reads ({suffix_list()}, or a DICOM series folder)")
    return reader, reader.read(Path(path), name or Path(path).name)


def read_file(path: Path, name: str | None = None, select: str = "best") -> list[tuple[Volume, str]]:
    """The volumes of a registered file as ``(volume, provenance)``: ``select="best"`` one
    (:func:`best_scan`), ``"all"`` every scan in the file. ``name``: the file as errors call it."""
    reader, volumes = _read(path, name)
    if select == "all":
        return [(v, describe_scan(v, reader.description) + (f"; scan {k + 1} of {len(volumes)} in the file" if len(volumes) > 1 else ""))
                for k, v in enumerate(volumes)]
    volume, why = best_scan(volumes)
    return [(volume, describe_scan(volume, reader.description) + (f"; {why}" if why else ""))]
