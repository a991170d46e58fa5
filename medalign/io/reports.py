"""Reading the reports file: CSV or JSONL with ``study_id`` (or ``accession_number``, as a RIS exports
them) and ``report`` (optional ``split``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from medalign.errors import InputError


def decode_text(raw: bytes) -> str:
    """Decode report bytes: UTF-8 (with or without BOM), else cp1252, else latin-1 (never fails)."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


#: the columns a reports file may key its rows by, in order of preference
KEY_COLUMNS = ("study_id", "accession_number")


def read_reports(path: Path) -> tuple[dict[str, dict[str, str]], list[str], str]:
    """Read reports keyed by study id, or by accession number when the file has no ``study_id`` column.

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
            rows.append({k: "" if v is None else str(v) for k, v in obj.items()})
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None:
            raise InputError(f"{path}: empty reports file")
        rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
    key = next((k for k in KEY_COLUMNS if rows and k in rows[0]), "study_id")
    if rows and (key not in rows[0] or "report" not in rows[0]):
        raise InputError(f"{path}: needs columns 'study_id' (or 'accession_number') and 'report' (found: {', '.join(rows[0])})")
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
