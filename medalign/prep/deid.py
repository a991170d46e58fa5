"""Removal of obvious identifiers from report text before anything is stored.

Rule-based and deliberately conservative about clinical content: measurements ("8 mm",
"2.5 x 3 cm"), series/image numbers and vertebral levels survive; names after titles or name
labels, dates and long ID-like numbers do not. It is a safety net for exports that were
supposed to be de-identified already, not a certified de-identification tool.
"""

from __future__ import annotations

import re

_MONTHS = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_NAME_WORD = r"(?:[A-Z][a-zA-Z'\-]+|[A-Z]\.)"  # a capitalised word or an initial
_PATTERNS: list[tuple[re.Pattern, str]] = [
    # titles and name labels followed by one to three capitalised words (an initial may sit between)
    (re.compile(rf"\b(?:Dr|Drs|Doctor|Mr|Mrs|Ms|Miss|Prof|Professor)\.?\s+(?:{_NAME_WORD}\.?\s+){{0,2}}{_NAME_WORD}"), "[NAME]"),
    (re.compile(rf"(?i:\b(?:patient name|patient|name|referring physician|physician|radiologist|signed by|dictated by|reported by|read by))\s*:\s*(?:{_NAME_WORD}[,.]?\s*){{1,3}}"), "[NAME] "),
    # dates: 12/03/2024, 12.03.24, 2024-03-12, 12 March 2024, March 12, 2024
    (re.compile(r"\b\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})\b"), "[DATE]"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "[DATE]"),
    (re.compile(rf"(?i)\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(rf"(?i)\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"), "[DATE]"),
    # labelled identifiers, then any remaining run of 6+ digits (MRN, accession) that is not a measurement
    (re.compile(r"(?i)\b(?:mrn|medical record(?: number)?|accession(?: number| no\.?)?|patient id|id|dob|date of birth)\s*[:#]?\s*[A-Z0-9\-/.]{4,}"), "[ID]"),
    (re.compile(r"\b\d{6,}\b(?!\s*(?:mm|cm|ml|hu|mgy|mg|%))", re.I), "[ID]"),
]


def redact_identifiers(text: str) -> str:
    """``text`` with names after titles or name labels, dates and ID-like numbers replaced by
    ``[NAME]``, ``[DATE]``, ``[ID]``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text
