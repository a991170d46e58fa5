"""Pseudonymisation (``prep --hash-ids KEYFILE``): keyed study ids, and ids and paths kept out of
what prep writes. Report text is redacted by :mod:`medalign.reports.deid`."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from medalign.errors import InputError


def pseudonym(study_id: str, key: bytes) -> str:
    """A pseudonymous study id (``prep --hash-ids``): HMAC-SHA256 of the id under the user's secret
    ``key`` (20 hex digits). The same key gives the same ids on every run; without the key they
    cannot be reversed or recomputed."""
    return "s" + hmac.new(key, study_id.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


def read_key(path) -> bytes:
    """The secret of ``--hash-ids KEYFILE`` (at least 16 bytes, surrounding whitespace dropped)."""
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise InputError(f"--hash-ids {path}: the key must hold at least 16 bytes of secret")
    return key



def pseudonymise_note(note: str, names: dict[str, str]) -> str:
    """A prep.log note with every study id it names replaced by its pseudonym."""
    for sid in sorted(names, key=len, reverse=True):
        if sid in note:
            note = note.replace(sid, names[sid])
    return note


def pseudonymise(key: bytes, studies: dict, reports: dict, problems: list[str]):
    """Study and report ids replaced by :func:`pseudonym`; messages that name an id use the pseudonym.
    Returns studies, reports, problems and ``{id: pseudonym}``."""
    ids = set(studies) | set(reports)
    names = {sid: pseudonym(sid, key) for sid in ids}
    problems = [re.sub(r"^study (.+?):", lambda m: f"study {names.get(m.group(1), '<withheld>')}:", p) for p in problems]
    return {names[s]: p for s, p in studies.items()}, {names[s]: e for s, e in reports.items()}, problems, names


def withhold_path(error: dict, study_path: Path | None) -> dict:
    """An error row without the study's folder or file path (its name is the original study id)."""
    reason = error["reason"]
    if study_path is not None:
        reason = reason.replace(str(study_path), "<study>").replace(Path(study_path).name, "<study>")
    reason = re.sub(r"[^\s():]+/", "<folder>/", reason)  # folder names of a file the reason names may identify a patient
    return {**error, "path": "<withheld: --hash-ids>", "reason": reason}
