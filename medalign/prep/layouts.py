"""Published data sets read in their own layouts (``prep --layout NAME``): where a layout's studies,
volume files, reports, released labels and splits are, and how one of its volumes is read. The default
``folder`` layout (a study per sub-folder or file, a reports file) is :mod:`medalign.prep.studies`'.

A new layout is a :class:`Layout` subclass registered with :func:`register_layout`, in the manner of the
reader registry; ``prep --layout`` offers every registered name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from medalign.errors import InputError
from medalign.io.volume import Volume
from medalign.prep.config import PrepConfig
from medalign.prep.splits import assign_split
from medalign.reports.given_labels import GivenLabels, read_given_labels
from medalign.reports.vocabulary import Vocabulary


@dataclasses.dataclass
class FoundStudies:
    """What a layout found under its root."""

    #: study id -> the folder errors name
    studies: dict[str, Path]
    #: study id -> its volume files, in reconstruction order
    files: dict[str, list[Path]]
    #: study id -> {"report": text, "split": train | val | test}
    reports: dict[str, dict[str, str]]
    #: the released labels, by study id (None: the layout has none)
    given_labels: GivenLabels | None
    #: prep.log lines (warnings about what was left out)
    notes: list[str]
    #: what error rows about reports name
    reports_source: Path
    #: False for a data set published without reports (RAD-ChestCT): studies are kept for evaluation,
    #: their report empty and their labels the released ones only
    reports_published: bool = True


class Layout:
    """A published data set's tree. Subclasses set ``name`` and write :meth:`find` and :meth:`read`."""

    name = ""

    def find(self, root: Path, config: PrepConfig, vocab: Vocabulary) -> FoundStudies:
        """Every study under ``root`` with its files, report, split and released labels."""
        raise NotImplementedError

    def read(self, root: Path, files: list[Path], config: PrepConfig) -> list[tuple[Volume, str]]:
        """The volumes of one study (``series.select``: ``best`` one, ``all`` each), with provenance."""
        raise NotImplementedError

    def patient_hash(self, study_id: str) -> str | None:
        """SHA-256 of the study's patient id (counts patients per split on a rerun), or None."""
        return None


_LAYOUTS: dict[str, type[Layout]] = {}


def register_layout(cls: type[Layout]) -> type[Layout]:
    """Class decorator: ``prep --layout cls.name`` reads data sets laid out as ``cls`` says."""
    _LAYOUTS[cls.name] = cls
    return cls


def list_layouts() -> list[str]:
    """The registered layout names, sorted (``folder`` is not among them: it is the default path)."""
    return sorted(_LAYOUTS)


def get_layout(name: str) -> Layout:
    """A fresh instance of the layout registered as ``name``."""
    if name not in _LAYOUTS:
        raise InputError(f"--layout {name}: not one of folder, {', '.join(list_layouts())}")
    return _LAYOUTS[name]()


@register_layout
class CtRateLayout(Layout):
    """CT-RATE as published (:mod:`medalign.io.ct_rate`). A study is a scan (``valid_4_a``); its
    reconstructions (``valid_4_a_1``, ``_2``) are its volumes. The official ``valid`` set is the
    ``test`` split; ``val`` is a patient-level carve-out of ``train`` (``val_fraction`` of the preset);
    a patient never spans two splits. Reports are the preset's ``report_sections``; the released
    labels are given labels (the labeler's agreement goes to prep.log). Voxel size and rescale come
    from the metadata CSV."""

    name = "ct-rate"

    def find(self, root: Path, config: PrepConfig, vocab: Vocabulary) -> FoundStudies:
        from medalign.io import ct_rate

        root = Path(root)
        files: dict[str, list[Path]] = {}
        folders: dict[str, Path] = {}
        odd = []
        for split in ("train", "valid"):
            for path in sorted((root / split).rglob("*.nii*")) if (root / split).is_dir() else []:
                parts = ct_rate.parse_volume_name(path.name)
                if parts is None or parts.split != split:
                    odd.append(path)
                    continue
                files.setdefault(parts.study_id, []).append(path)
                folders.setdefault(parts.study_id, path.parent)
        if not files:
            raise InputError(f"{root}: no CT-RATE volumes (train/train_<P>/train_<P>_<scan>/train_<P>_<scan>_<recon>.nii.gz, "
                             "or valid/ alike): point --images at the data set's dataset/ folder")
        files = {sid: sorted(f, key=lambda p: ct_rate.parse_volume_name(p.name).reconstruction) for sid, f in files.items()}
        notes = [f"--layout ct-rate: {sum(len(f) for f in files.values())} volumes in {len(files)} scans"]
        if odd:
            notes.append(f"warning: {len(odd)} NIfTI files not named as CT-RATE names them (e.g. {odd[0].relative_to(root)}); left out")
        texts = ct_rate.read_reports(root, config.report_sections)
        reports: dict[str, dict[str, str]] = {}
        differing = 0
        for sid, volume_files in files.items():
            own = [texts[p.name] for p in volume_files if p.name in texts]
            if not own:
                continue  # prep names the study "no report for this study"
            differing += len(set(own)) > 1
            parts = ct_rate.parse_volume_name(volume_files[0].name)
            reports[sid] = {"report": own[0], "split": self._split(parts, config)}
        if differing:
            notes.append(f"warning: {differing} scans whose reconstructions carry different reports; the first reconstruction's is used")
        given: GivenLabels | None = None
        for path in ct_rate.label_files(root):
            released = read_given_labels(path, vocab)  # a VolumeName also names its scan (the first reconstruction's labels)
            given = {**(given or {}), **{sid: released[sid] for sid in files if sid in released}}
        return FoundStudies(folders, files, reports, given, notes, root / "radiology_text_reports")

    @staticmethod
    def _split(parts, config: PrepConfig) -> str:
        if parts.split == "valid":
            return "test"  # the benchmark's own test set
        return "val" if assign_split("patient:" + parts.patient_id, config.val_fraction, 0.0) == "val" else "train"

    def read(self, root: Path, files: list[Path], config: PrepConfig) -> list[tuple[Volume, str]]:
        from medalign.io import ct_rate

        metadata = ct_rate.read_metadata(Path(root))
        missing = [p.name for p in files if p.name not in metadata]
        if missing:
            raise InputError(f"{missing[0]}: no row in the metadata CSV (its voxel size and rescale are unknown)")
        chosen = list(files)
        why = ""
        if config.series.select != "all" and len(files) > 1:  # the thinnest slices, then the first reconstruction
            chosen = [min(files, key=lambda p: (metadata[p.name].spacing[2], ct_rate.parse_volume_name(p.name).reconstruction))]
            why = f"; reconstruction {ct_rate.parse_volume_name(chosen[0].name).reconstruction} of {len(files)}, the thinnest slices"
        out = []
        for path in chosen:
            geometry = metadata[path.name]
            volume = dataclasses.replace(ct_rate.load_ct_rate_volume(path, geometry),
                                         patient_id=ct_rate.parse_volume_name(path.name).patient_id)
            spacing = " x ".join(f"{v:g}" for v in geometry.spacing)
            out.append((volume, f"CT-RATE {path.name}: {spacing} mm and HU = {geometry.slope:g} x value {geometry.intercept:+g} "
                                f"from the metadata CSV{why}"))
        return out

    def patient_hash(self, study_id: str) -> str | None:
        patient = study_id.rsplit("_", 1)[0]  # valid_4_a -> valid_4
        return hashlib.sha256(patient.encode("utf-8")).hexdigest()


@register_layout
class RadChestCtLayout(Layout):
    """RAD-ChestCT as published (:mod:`medalign.io.rad_chestct`): a ``<NoteAcc_DEID>.npz`` is a study
    of one volume; its set (``trn``/``val``/``tst``) is its split, as published (patient-disjoint). There
    are no public reports: the data set is for evaluation, its labels the released abnormality labels
    mapped onto the vocabulary by ``configs/label_maps/rad_chestct.yaml`` (unmapped findings stay
    unknown, never negative)."""

    name = "rad-chestct"
    label_map = "rad_chestct"

    def __init__(self) -> None:
        self._patients: dict[str, str] = {}

    def find(self, root: Path, config: PrepConfig, vocab: Vocabulary) -> FoundStudies:
        from medalign.io import rad_chestct
        from medalign.reports.label_map import load_label_map

        root = Path(root)
        files: dict[str, list[Path]] = {}
        odd = []
        for path in sorted(root.rglob("*.npz")):
            parts = rad_chestct.parse_volume_name(path.name)
            if parts is None:
                odd.append(path)
            elif parts.study_id in files:
                raise InputError(f"{path}: {parts.study_id} is also {files[parts.study_id][0]}; one file per study")
            else:
                files[parts.study_id] = [path]
        if not files:
            raise InputError(f"{root}: no RAD-ChestCT volumes (<NoteAcc_DEID>.npz: trn00001.npz, val27291.npz, tst34780.npz): "
                             "point --images at the folder holding them and the label CSVs")
        mapping = load_label_map(self.label_map)
        mapping.check(vocab, f"label map {self.label_map}")
        released: dict[str, dict[str, int]] = {}
        for path in rad_chestct.find_files(root, rad_chestct.LABEL_FILES):
            released.update(rad_chestct.read_abnormality_labels(path))
        given = {sid: mapping.apply(released[sid], vocab) for sid in files if sid in released}
        unmapped = [n for n in vocab.names if n.lower() not in {t.lower() for t in mapping.targets()}]
        notes = [f"--layout rad-chestct: {len(files)} volumes; released labels for {len(given)} "
                 f"(mapped by label map {self.label_map}: {mapping.source}); no public reports: evaluation only",
                 f"unknown in every study (no RAD-ChestCT label maps to them): {', '.join(unmapped) or 'none'}"]
        if odd:
            notes.append(f"warning: {len(odd)} .npz files not named as RAD-ChestCT names them (e.g. {odd[0].relative_to(root)}); left out")
        missing = len(files) - len(given)
        if missing:
            notes.append(f"warning: {missing} volumes have no row in the label CSVs ({', '.join(rad_chestct.LABEL_FILES)}); "
                         "their findings are unknown")
        self._patients = rad_chestct.read_patients(root)
        reports = {sid: {"report": "", "split": rad_chestct.parse_volume_name(f[0].name).split} for sid, f in files.items()}
        return FoundStudies({sid: f[0].parent for sid, f in files.items()}, files, reports, given, notes, root,
                            reports_published=False)

    def read(self, root: Path, files: list[Path], config: PrepConfig) -> list[tuple[Volume, str]]:
        from medalign.io import rad_chestct

        volume = rad_chestct.load_rad_chestct_volume(files[0])
        return [(volume, f"{rad_chestct.PROVENANCE}{files[0].name}: {rad_chestct.VOXEL_MM} mm isotropic HU, superior slice first, as published")]

    def patient_hash(self, study_id: str) -> str | None:
        patient = self._patients.get(study_id)
        return hashlib.sha256(patient.encode("utf-8")).hexdigest() if patient else None
