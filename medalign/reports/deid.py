"""Removal of identifiers from report text before anything is stored.

Rule-based and conservative about clinical content: measurements ("8 mm", "2.5 x 3 cm"),
series/image numbers, vertebral levels and clinical words that begin like a label ("identified",
"IDH", "Dr." inside "Dr. Smith. FINDINGS:" keeps its header) survive; names after titles, name
labels and signature phrases, dates, phone and fax numbers, e-mail addresses, street addresses,
and labelled or long ID numbers do not. Measured on generated PHI and clinical sentences against
Presidio and philter (``bench/deid.py``, ``docs/privacy.md``). It is a safety net for exports that
were supposed to be de-identified already, not a certified de-identification tool.
"""

from __future__ import annotations

import re

_MONTHS = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
#: report section headers: never a name, even in capitals right after one ("Dr. Smith. FINDINGS:")
_HEADERS = (r"(?:FINDINGS|IMPRESSION|IMPRESSIONS|TECHNIQUE|HISTORY|COMPARISON|COMPARISONS|INDICATION|INDICATIONS|CONCLUSION|"
            r"CONCLUSIONS|CLINICAL|REPORT|RESULT|RESULTS|EXAM|EXAMINATION|PROCEDURE|RECOMMENDATION|RECOMMENDATIONS|NOTE|ADDENDUM)")
#: letters beyond ASCII (García, Atatürk, Łukasz): Latin-1 and Latin Extended-A
_UP, _LOW = r"[A-ZÀ-ÖØ-Þ\u0100-\u017F]", r"[a-zß-öø-ÿ\u0100-\u017F]"
_LETTER = r"A-Za-zÀ-ÖØ-öø-ÿ\u0100-\u017F"
#: a capitalised word, an all-caps surname of 4+ letters (not CT, MRI, PET) or an initial; not a section header
_NAME_WORD = rf"(?!{_HEADERS}\b)(?:{_UP}{_LOW}[{_LETTER}'\-]*|{_UP}'{_UP}[{_LETTER}]+|{_UP}{{4,}}|{_UP}\.)"
#: one to three name words; a period ends the name unless it closes an initial ("J. Smith")
_NAME = rf"{_NAME_WORD}(?:,?\s+{_NAME_WORD}){{0,2}}"
_DEGREES = r"(?:,?\s*(?:MD|M\.D\.|DO|PhD|FRCR|FRCPC|MBBS|RN|PA-C|NP|DMRD))*"
_PATTERNS: list[tuple[re.Pattern, str]] = [
    # e-mail addresses and phone/fax numbers first: their digits must not be read as dates or IDs
    (re.compile(r"\b[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+\b"), "[CONTACT]"),
    (re.compile(r"(?i)\b(?:tel(?:ephone)?|phone|ph|fax|pager|beeper|mobile)\.?\s*(?:no\.?|number|#)?\s*[:#]?\s*"
                r"\+?[\d(][\d\s().\-/]{5,}\d"), "[CONTACT]"),
    (re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.\-]?)?(?:\(\d{2,4}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}(?!\w|\.\d)"), "[CONTACT]"),
    # titles, name labels and signature phrases followed by a name
    (re.compile(rf"\b(?:Dr|Drs|Doctor|Mr|Mrs|Ms|Miss|Prof|Professor)\.?\s+{_NAME}{_DEGREES}"), "[NAME]"),
    (re.compile(rf"(?i:\b(?:patient name|patient|name|referring physician|referring doctor|physician|radiologist|attending|"
                rf"resident|technologist|transcriptionist))\s*:\s*{_NAME}{_DEGREES}"), "[NAME]"),
    (re.compile(rf"(?i:\b(?:electronically signed by|signed by|dictated by|reported by|read by|verified by|approved by|"
                rf"transcribed by|reviewed by))\s*:?\s*{_NAME}{_DEGREES}"), "[NAME]"),
    (re.compile(rf"\b{_NAME_WORD}(?:\s+{_NAME_WORD}){{0,2}},\s*(?:MD|M\.D\.|DO|PhD|FRCR|MBBS)\b"), "[NAME]"),
    # street addresses: a house number, up to three words and a street type
    (re.compile(rf"\b\d{{1,5}}\s+(?:{_UP}{_LOW}+\s+){{1,3}}(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|way|"
                r"court|place|square|strasse|straße|sokak|caddesi)\b\.?"), "[ADDRESS]"),
    # dates: 12/03/2024, 12.03.24, 2024-03-12, 12-Mar-2024, 12 March 2024, March 12, 2024, March 2024
    # (one separator throughout: "16.2/24.7", a ratio, is no date)
    (re.compile(r"\b\d{1,2}([/.\-])\d{1,2}\1(?:\d{4}|\d{2})\b(?!\.?\d)"), "[DATE]"),
    (re.compile(r"\b\d{4}([/.\-])\d{1,2}\1\d{1,2}\b(?!\.?\d)"), "[DATE]"),
    (re.compile(rf"(?i)\b\d{{1,2}}(?:st|nd|rd|th)?[\s\-]+{_MONTHS}\.?,?[\s\-]+\d{{2,4}}\b"), "[DATE]"),
    (re.compile(rf"(?i)\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"), "[DATE]"),
    (re.compile(r"\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|January|February|March|April|June|July|August|"
                r"September|October|November|December)\.?,?\s+(?:19|20)\d{2}\b"), "[DATE]"),
    # labelled identifiers (the label a whole word; the value holds a digit), then any remaining run
    # of 6+ digits (MRN, accession) that is not a measurement
    (re.compile(r"(?i)\b(?:mrn|medical record(?: number| no\.?)?|record no\.?|accession(?: number| no\.?| #)?|acc(?: no\.?|#)|"
                r"patient id|pt id|id|dob|date of birth|ssn|social security(?: number)?|nhs(?: number| no\.?)?|insurance(?: number| no\.?))"
                r"(?![\w])\s*[:#]?\s*(?:no\.?\s*|number\s*)?(?=[A-Z\-/.]*\d)[A-Z0-9\-/.]{4,}"), "[ID]"),
    (re.compile(r"\b\d{6,}\b(?!\s*(?:mm|cm|ml|hu|mgy|mg|%|cc|mgy\*cm|mgycm))", re.I), "[ID]"),
]


def redact_identifiers(text: str) -> str:
    """``text`` with names (after titles, labels, signature phrases, or before a degree), dates,
    phone and fax numbers, e-mail and street addresses, and ID-like numbers replaced by ``[NAME]``,
    ``[DATE]``, ``[CONTACT]``, ``[ADDRESS]``, ``[ID]``. A removed name keeps the separator after it
    ("Dr. Smith. FINDINGS:" -> "[NAME]. FINDINGS:")."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text
