"""The dataset's manifest (``manifest.parquet``): its columns, its writer and its reader in one place.
``prep`` writes it; ``data``, ``train`` and ``tasks`` read it through :func:`read_manifest`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_write

MANIFEST = "manifest.parquet"


@dataclasses.dataclass
class Manifest:
    """The rows of ``manifest.parquet`` as column lists, plus the finding names (vocab order)."""

    root: Path
    columns: dict[str, list]
    findings: list[str]

    def __len__(self) -> int:
        return len(self.columns["study_id"])

    def subset(self, split: str | None) -> "Manifest":
        """Rows of one split (``None``: all)."""
        if split is None:
            return self
        return self.subset_rows(i for i, s in enumerate(self.columns["split"]) if s == split)

    def subset_rows(self, rows) -> "Manifest":
        """The given row indices, in that order."""
        rows = list(rows)
        return Manifest(self.root, {k: [v[i] for i in rows] for k, v in self.columns.items()}, self.findings)

    def labels(self) -> np.ndarray:
        """``(N, K)`` float labels: 1 present, 0 negated, -1 uncertain, NaN not mentioned."""
        out = np.full((len(self), len(self.findings)), np.nan, dtype=np.float32)
        for k, name in enumerate(self.findings):
            for i, v in enumerate(self.columns[name]):
                if v is not None:
                    out[i, k] = v
        return out

    def truth(self, names: list[str], uncertain: str = "ignore") -> np.ndarray:
        """``(N, len(names))`` evaluation truth from the parsed labels: 1 present, 0 negated or not
        mentioned; uncertain as the policy says (positive 1, negative 0, half or ignore -1: left out
        of that finding's metrics); NaN for a name the dataset's vocabulary does not have, and for an
        unlabelled finding of a study without a report (``--layout rad-chestct``: unknown, not absent)."""
        parsed = {name: k for k, name in enumerate(self.findings)}
        full = self.labels()
        # "not mentioned = absent" needs a report that could have mentioned it
        has_report = np.array([bool((r or "").strip()) for r in self.columns.get("report", [" "] * len(self))])
        out = np.full((len(self), len(names)), np.nan, np.float32)
        for k, name in enumerate(names):
            if name in parsed:
                col = full[:, parsed[name]]
                out[:, k] = np.where(np.isnan(col) & has_report, 0.0, col)
        if uncertain in ("positive", "negative"):
            out[out == -1] = 1.0 if uncertain == "positive" else 0.0
        return out

    def reportless(self) -> int:
        """How many rows have no report (a data set published without them: evaluation only)."""
        return sum(1 for r in self.columns.get("report", []) if not (r or "").strip())

    def studies(self) -> "Manifest":
        """One row per study: the first row of each ``study_id`` (in order), with a ``volumes`` column
        listing all of that study's volumes (several under ``series.select: all``), which
        :func:`~medalign.models.inference.embed_studies` averages."""
        index = self.study_index()
        first = {}
        volumes: list[list[str]] = [[] for _ in range(int(index.max()) + 1 if len(index) else 0)]
        for i, (number, vol) in enumerate(zip(index, self.columns["volume"])):
            first.setdefault(int(number), i)
            volumes[number].append(vol)
        out = self.subset_rows(first.values())
        out.columns["volumes"] = volumes
        return out

    def study_index(self) -> np.ndarray:
        """``(N,)`` int64: the number of each row's study (0, 1, ... in order of first appearance);
        a study's volumes share it, and row ``k`` of :meth:`studies` is study ``k``."""
        numbers: dict[str, int] = {}
        return np.array([numbers.setdefault(sid, len(numbers)) for sid in self.columns["study_id"]], dtype=np.int64)

    def volumes(self) -> "Manifest":
        """One row per volume: a :meth:`studies` manifest expanded back (any other manifest as it is)."""
        if "volumes" not in self.columns:
            return self
        rows = [(i, v) for i, vols in enumerate(self.columns["volumes"]) for v in vols]
        columns = {k: [col[i] for i, _ in rows] for k, col in self.columns.items() if k != "volumes"}
        columns["volume"] = [v for _, v in rows]
        return Manifest(self.root, columns, self.findings)

    def volume_path(self, i: int) -> Path:
        """Absolute path of row ``i``'s cached volume."""
        return self.root / self.columns["volume"][i]

    def fundus_path(self, i: int) -> Path | None:
        """Absolute path of row ``i``'s fundus image (``(H, W)`` float16 in [0, 1], the SLO/IR image a
        vendor OCT file holds beside the volume), or ``None`` when it has none."""
        rel = (self.columns.get("fundus") or [""] * len(self))[i]
        return self.root / rel if rel else None


def read_manifest(dataset: Path) -> Manifest:
    """Open ``DATASET/manifest.parquet`` and the vocabulary saved beside it."""
    import pyarrow.parquet as pq

    from medalign.reports.vocabulary import load_vocabulary

    dataset = Path(dataset)
    path = dataset / MANIFEST
    if not path.is_file():
        raise InputError(f"{dataset}: not a prepared dataset (no {MANIFEST}; run 'medalign prep')")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: unreadable manifest ({e.__class__.__name__}: {e})") from None
    vocab = load_vocabulary(dataset / "vocab.yaml")
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    missing = [n for n in vocab.names if n not in columns]
    if missing:
        raise InputError(f"{path}: no label column for finding '{missing[0]}'")
    return Manifest(dataset, columns, vocab.names)


def manifest_table(rows: list[dict], finding_names: list[str]):
    """The manifest as a pyarrow table: one row per prepared volume, fixed columns then an int8
    column per finding (1 present, 0 negated, -1 uncertain, null not mentioned; docs/data_format.md)."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for key in ("study_id", "split", "volume", "report", "findings", "impression", "provenance"):
        columns[key] = pa.array([r[key] for r in rows], pa.string())
    columns["series"] = pa.array([r.get("series", "") for r in rows], pa.string())
    columns["fundus"] = pa.array([r.get("fundus", "") for r in rows], pa.string())
    columns["manufacturer"] = pa.array([r.get("manufacturer", "") for r in rows], pa.string())
    columns["shape"] = pa.array([r["shape"] for r in rows], pa.list_(pa.int32()))
    columns["spacing"] = pa.array([r["spacing"] for r in rows], pa.list_(pa.float32()))
    columns["source_spacing"] = pa.array([r["source_spacing"] for r in rows], pa.list_(pa.float32()))
    for name in finding_names:
        columns[name] = pa.array([r["labels"][name] for r in rows], pa.int8())
    return pa.table(columns)


def write_manifest(rows: list[dict], finding_names: list[str], out: Path, name: str = MANIFEST) -> None:
    """Write ``manifest.parquet`` (or a shard's manifest) atomically."""
    import pyarrow.parquet as pq

    table = manifest_table(rows, finding_names)
    atomic_write(out / name, lambda tmp: pq.write_table(table, tmp))
