"""Finding labels a hospital already has (``prep --labels FILE.csv``), and how they agree with the labeler.

The file has a ``study_id`` column (or ``accession_number``, as ``medalign label`` writes for an
accession-keyed export and as ``--group-by accession`` names studies, or CT-RATE's ``VolumeName``,
whose ``.nii``/``.nii.gz`` ending is dropped) and one column per finding, named as in the vocabulary (case, spaces and underscores do
not matter). Values: 1 present, 0 absent, -1 uncertain, empty not given (the labeler's label is kept
there). Given labels win over the labeler.
"""

from __future__ import annotations

import re
from pathlib import Path

from medalign.errors import InputError
from medalign.io.tables import read_table
from medalign.reports.vocabulary import Vocabulary

ID_COLUMNS = ("study_id", "accession_number", "VolumeName")
_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}

GivenLabels = dict[str, dict[str, int | None]]


def _key(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def row_study_ids(value: str, column: str) -> list[str]:
    """A labels file row's study id from its ``column`` value, then the ids it also stands for (a
    CT-RATE ``VolumeName`` also names its scan, :func:`medalign.io.ct_rate.label_keys`); ``[""]`` when empty."""
    if column == "VolumeName" and value.strip():
        from medalign.io.ct_rate import label_keys

        return label_keys(value)
    return [value.strip()]


def read_given_labels(path: Path, vocab: Vocabulary) -> GivenLabels:
    """``{study_id: {finding: 1 | 0 | -1 | None}}`` from a labels CSV; a column naming no finding of
    ``vocab``, a bad value or a repeated study is one :class:`InputError` line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels file not found")
    header, reader = read_table(path)
    id_column = next((c for c in ID_COLUMNS if c in header), None)
    if id_column is None:
        raise InputError(f"{path}: needs a 'study_id' (or 'accession_number' or 'VolumeName') column (found: {', '.join(header) or 'no header'})")
    by_key = {_key(n): n for n in vocab.names}
    columns: dict[str, str] = {}
    for column in header:
        if column == id_column:
            continue
        if _key(column) not in by_key:
            raise InputError(f"{path}: column '{column}' matches no finding of the vocabulary (findings: {', '.join(vocab.names)})")
        columns[column] = by_key[_key(column)]
    if not columns:
        raise InputError(f"{path}: no finding columns besides '{id_column}'")
    out: GivenLabels = {}
    aliases: GivenLabels = {}
    for line, row in enumerate(reader, start=2):
        sid, *also = row_study_ids(row.get(id_column) or "", id_column)
        if not sid:
            raise InputError(f"{path}:{line}: empty {id_column}")
        if sid in out:
            raise InputError(f"{path}:{line}: study {sid} appears twice")
        labels: dict[str, int | None] = {}
        for column, name in columns.items():
            raw = (row.get(column) or "").strip()
            if raw not in _VALUES:
                raise InputError(f"{path}:{line}: column '{column}' has {raw!r}; expected 1, 0, -1 or empty")
            labels[name] = _VALUES[raw]
        out[sid] = labels
        for alias in also:
            aliases.setdefault(alias, labels)  # a scan's first reconstruction gives the scan's labels
    return {**aliases, **out}


def merge_labels(parsed: dict[str, int | None], given: dict[str, int | None] | None) -> dict[str, int | None]:
    """The labeler's labels with every given (non-empty) label put in their place."""
    if not given:
        return parsed
    return {name: given[name] if given.get(name) is not None else value for name, value in parsed.items()}


def agreement_table(pairs: list[tuple[dict[str, int | None], dict[str, int | None]]], names: list[str]) -> list[str]:
    """Lines of a per-finding table comparing given labels with the labeler's on the same reports
    (present = 1 against anything else; studies without a given value for the finding are left out):
    studies compared, positives each way, agreement and Cohen's kappa (scikit-learn)."""
    from sklearn.metrics import cohen_kappa_score

    lines = ["| finding | compared | given positive | labeler positive | both | agreement | kappa |", "|---|---|---|---|---|---|---|"]
    for name in names:
        given = [g[name] == 1 for g, p in pairs if g.get(name) is not None]
        parsed = [p[name] == 1 for g, p in pairs if g.get(name) is not None]
        if not given:
            continue
        both = sum(a and b for a, b in zip(given, parsed))
        agree = sum(a == b for a, b in zip(given, parsed)) / len(given)
        kappa = cohen_kappa_score(given, parsed) if len(set(given) | set(parsed)) > 1 else float("nan")
        kappa_text = "–" if kappa != kappa else f"{kappa:.2f}"
        lines.append(f"| {name} | {len(given)} | {sum(given)} | {sum(parsed)} | {both} | {agree:.1%} | {kappa_text} |")
    return lines
