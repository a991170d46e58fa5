"""Report text: decoding remnants away, whitespace, FINDINGS / IMPRESSION sections, sentences."""

from __future__ import annotations

import html
import re

_SECTION_NAMES = {
    "findings": ["findings", "finding", "report", "description", "observations", "results", "result"],
    "impression": ["impression", "impressions", "conclusion", "conclusions", "summary", "assessment", "opinion",
                   "interpretation", "final impression", "recommendation", "recommendations", "addendum"],
    # what the request, the method and the comparison say is not what the images show: kept apart
    "other": ["clinical history", "history", "clinical information", "clinical indication", "clinical details",
              "indication", "indications", "reason for exam", "reason for examination", "reason for study",
              "technique", "protocol", "comparison", "comparisons", "procedure", "exam", "examination"],
}
_ALL_NAMES = sorted((n for names in _SECTION_NAMES.values() for n in names), key=len, reverse=True)
_NAME_PATTERN = "|".join(n.replace(" ", r"\s+") for n in _ALL_NAMES)
#: "NAME:" / "NAME -" after a line start, a space or a full stop; or NAME alone on its line
_HEADER = re.compile(
    r"(?im)(?:(?:^|(?<=[\s.]))(" + _NAME_PATTERN + r")[ \t]*(?::|\s-\s)|^[ \t]*(" + _NAME_PATTERN + r")[ \t]*$)"
)
_RTF_CONTROL = re.compile(r"\\[a-z]+-?\d* ?|[{}]")
#: RTF header groups (font and colour tables, styles, document info, ignorable destinations) hold no report text
_RTF_HEADER_GROUP = re.compile(r"\{\\(?:fonttbl|colortbl|stylesheet|info|\*)(?:[^{}]|\{[^{}]*\})*\}")
_TAG = re.compile(r"<[^>]{1,200}>")
_SENTENCE_END = re.compile(r"(?<!\d)[.!?;](?!\d)|\n")


def clean_report(text: str) -> str:
    """Strip HTML/RTF remnants, control characters and redundant whitespace."""
    if text.lstrip().startswith("{\\rtf"):
        text = _RTF_CONTROL.sub(" ", _RTF_HEADER_GROUP.sub(" ", text))
    text = html.unescape(_TAG.sub(" ", text))
    text = "".join(ch if ch.isprintable() or ch == "\n" else " " for ch in text)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def split_sections(text: str) -> dict[str, str]:
    """``{"findings", "impression", "other"}`` from headed text (history, indication, technique and
    comparison go to ``other``); unheaded text counts as findings."""
    matches = list(_HEADER.finditer(text))
    out = {"findings": "", "impression": "", "other": ""}
    if not matches:
        out["findings"] = text.strip()
        return out
    preamble = text[: matches[0].start()].strip()
    for i, m in enumerate(matches):
        name = re.sub(r"\s+", " ", (m.group(1) or m.group(2)).lower())
        section = next(k for k, names in _SECTION_NAMES.items() if name in names)
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end() : end].strip()
        out[section] = (out[section] + " " + body).strip()
    if preamble and not out["findings"]:
        out["findings"] = preamble
    return out


def reported_text(text: str) -> str:
    """What the radiologist reports seeing: the FINDINGS and IMPRESSION sections (the whole text
    when it has no headers), without history, indication, technique or comparison."""
    sections = split_sections(text)
    return (sections["findings"] + "\n" + sections["impression"]).strip()


def split_sentences(text: str) -> list[str]:
    """Sentences (and ``;``-separated clauses), never splitting decimals like ``3.5 mm``."""
    parts = _SENTENCE_END.split(text)
    return [p.strip() for p in parts if p and p.strip()]
