"""Reading the reports file: CSV (any delimiter and encoding :mod:`medalign.io.tables` reads) or
JSONL with ``study_id`` (or ``accession_number``, as a RIS exports them) and ``report`` (optional
``split``); other column names are mapped with ``columns`` (``--columns id=AccNo,report=ReportText``)."""

from __future__ import annotations

import json
from pathlib import Path

from medalign.errors import InputError
from medalign.io.tables import decode_text, read_table


#: the columns a reports file may key its rows by, in order of preference
KEY_COLUMNS = ("study_id", "accession_number")


def read_reports(path: Path, columns: dict[str, str] | None = None) -> tuple[dict[str, dict[str, str]], list[str], str]:
    """Read reports keyed by study id, or by accession number when the file has no ``study_id`` column.
    ``columns`` names the file's own columns for ``study_id``, ``accession_number``, ``report``, ``split``.

    Returns ``({key: {"report": str, "split": str?}}, problems, key column)`` where problems are
    one-line descriptions of rows that were dropped (duplicates, missing ids).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: reports file not found")
    text = decode_text(path.read_bytes())
    rows: list[dict[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{n}: expected a JSON object")
            rename = {theirs: ours for ours, theirs in (columns or {}).items()}
            rows.append({rename.get(k, k): "" if v is None else str(v) for k, v in obj.items()})
    else:
        if not text.strip():
            raise InputError(f"{path}: empty reports file")
        _, rows = read_table(path, columns)
    key = next((k for k in KEY_COLUMNS if rows and k in rows[0]), "study_id")
    if rows and (key not in rows[0] or "report" not in rows[0]):
        raise InputError(f"{path}: needs columns 'study_id' (or 'accession_number') and 'report' (found: {', '.join(rows[0])}); "
                         "name yours with --columns id=COLUMN,report=COLUMN")
    out: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    seen_twice: set[str] = set()
    for r in rows:
        sid = r.get(key, "").strip()
        if not sid:
            problems.append(f"a row without {key} was ignored")
            continue
        if sid in out:
            if out[sid]["report"].strip() != r.get("report", "").strip():
                out[sid]["conflict"] = True  # two different reports for one study: neither is trusted
            seen_twice.add(sid)
            continue
        entry = {"report": r.get("report", "")}
        if r.get("split"):
            entry["split"] = r["split"].strip()
        out[sid] = entry
    for sid in sorted(seen_twice):
        if out[sid].get("conflict"):
            problems.append(f"study {sid}: several different reports under one {key}; the study is not prepared")
        else:
            problems.append(f"study {sid}: the same report appears twice; one kept")
    return out, problems, key
