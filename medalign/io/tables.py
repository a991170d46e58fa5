"""Tables as hospitals export them: CSV with ``,`` or ``;`` (European Excel) or tab or ``|`` between
fields, UTF-8 with or without a byte-order mark or Windows-1252, and columns named as the source
system names them (``--columns id=AccNo,report=ReportText``)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from medalign.errors import InputError

DELIMITERS = ",;\t|"


def decode_text(raw: bytes) -> str:
    """Decode text bytes: UTF-8 (with or without BOM), else cp1252, else latin-1 (never fails)."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def sniff_delimiter(text: str) -> str:
    """The field delimiter among ``, ; tab |``: the one the header line and the next lines agree on
    (``csv.Sniffer`` over the first lines, restricted to those four), else the most frequent in the
    header, else ``,``."""
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        header = text.splitlines()[0] if text.strip() else ""
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] else ","


def read_table(path: Path, columns: dict[str, str] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a delimited text file, each row ``{column: value}`` (missing values ``""``).
    ``columns`` renames source columns to medalign's (``{"study_id": "AccNo"}``); a named source column
    that is absent is an :class:`InputError` naming the columns found."""
    path = Path(path)
    text = decode_text(path.read_bytes())
    if not text.strip():
        raise InputError(f"{path}: empty file")
    reader = csv.DictReader(io.StringIO(text), delimiter=sniff_delimiter(text))
    header = [h.strip() if h else h for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rename = {}
    for ours, theirs in (columns or {}).items():
        if theirs not in header:
            raise InputError(f"{path}: no column '{theirs}' (for {ours}); found: {', '.join(header)}")
        rename[theirs] = ours
    rows = [{rename.get(k, k): (v or "") for k, v in r.items() if k is not None} for r in reader]
    return [rename.get(h, h) for h in header], rows


#: what ``--columns`` may name, and the column each stands for
COLUMN_ROLES = {"id": "study_id", "study_id": "study_id", "accession": "accession_number", "accession_number": "accession_number",
                "report": "report", "text": "report", "split": "split"}


def parse_columns(spec: str) -> dict[str, str]:
    """``id=AccNo,report=ReportText`` -> ``{"study_id": "AccNo", "report": "ReportText"}``; an unknown
    role or a malformed pair is an :class:`InputError` naming the roles."""
    out: dict[str, str] = {}
    for pair in (p for p in spec.split(",") if p.strip()):
        role, sep, column = pair.partition("=")
        role = role.strip().lower()
        if not sep or not column.strip():
            raise InputError(f"--columns {spec}: '{pair}' is not ROLE=COLUMN (e.g. id=AccNo,report=ReportText)")
        if role not in COLUMN_ROLES:
            raise InputError(f"--columns {spec}: unknown role '{role}' (roles: id, accession, report (or text), split)")
        out[COLUMN_ROLES[role]] = column.strip()
    return out
