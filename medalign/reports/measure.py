"""Sizes written in report sentences ("16 x 11 mm", "1.2 cm", "short axis of 13 mm", "less than 1 cm").

Some findings are defined by a size rather than a word: a lymph node is pathological from 10 mm in
short axis (the usual CT criterion), whatever adjective the report uses. This module finds the
measurements of a tokenized sentence; :class:`~medalign.reports.vocabulary.ConceptPattern`'s ``min_size_mm``
compares them with a threshold.
"""

from __future__ import annotations

import dataclasses
import re

from medalign.reports.lexicon import Tokens

#: one token holding a number, optionally "AxB[xC]" and a unit glued on ("16x11mm", "12mm", "1.5")
_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)((?:x\d+(?:\.\d+)?)*)(mm|cm)?$")
#: the tokenizer cuts "1.5x1.2 cm" after the first decimal: "1.5", "x1.2"
_MORE = re.compile(r"^((?:x\d+(?:\.\d+)?)+)(mm|cm)?$")
_UNITS = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "cm": 10.0, "centimeter": 10.0, "centimetre": 10.0}
#: words before a size that make it a bound: "less than 1 cm" (upper), "larger than 10 mm" (lower)
_UPPER = (("less", "than"), ("smaller", "than"), ("below",), ("under",), ("not", "exceeding"), ("not", "exceed"),
          ("no", "larger", "than"), ("no", "more", "than"))
_LOWER = (("greater", "than"), ("larger", "than"), ("more", "than"), ("exceeding",), ("exceed",), ("above",),
          ("over",), ("at", "least"))
_SHORT_AXIS = (("short", "axis"), ("short", "ax"), ("short", "diameter"), ("smallest", "diameter"), ("short", "axial"))
_LONG_AXIS = (("long", "axis"), ("long", "ax"), ("long", "diameter"), ("largest", "diameter"), ("long", "axial"))


@dataclasses.dataclass(frozen=True, slots=True)
class Measurement:
    """A size in a sentence: tokens ``start .. end - 1``; ``dims_mm`` as written (one to three);
    ``bound`` is ``"="`` for a size, ``"<"`` for "less than …", ``">"`` for "larger than …";
    ``axis`` is ``"short"``, ``"long"`` or ``""`` when the sentence does not say."""

    start: int
    end: int
    dims_mm: tuple[float, ...]
    bound: str
    axis: str

    @property
    def short_axis_mm(self) -> float | None:
        """The short-axis size: the smaller of "A x B", a lone number unless it is a long axis."""
        if len(self.dims_mm) > 1:
            return min(self.dims_mm)
        return None if self.axis == "long" else self.dims_mm[0]

    def compare(self, threshold_mm: float) -> int | None:
        """1 when the short axis reaches ``threshold_mm``, 0 when it stays below, ``None`` when the
        sentence does not say (a long axis only, or a bound on the wrong side of the threshold)."""
        size = self.short_axis_mm
        if size is None:
            return None
        if self.bound == "<":
            return 0 if size <= threshold_mm else None
        if self.bound == ">":
            return 1 if size >= threshold_mm else None
        return 1 if size >= threshold_mm else 0


def _ends_with(lemmas: tuple[str, ...], end: int, phrases: tuple[tuple[str, ...], ...]) -> int:
    """Length of the phrase of ``phrases`` that ends just before token ``end`` (0 if none)."""
    for phrase in phrases:
        n = len(phrase)
        if end >= n and lemmas[end - n:end] == phrase:
            return n
    return 0


def _axis(lemmas: tuple[str, ...], start: int, end: int) -> str:
    """Short or long axis named within four words of a size ("short axis of 13 mm", "9 mm in short axis")."""
    window = lemmas[max(0, start - 4):end + 4]
    for axis, phrases in (("short", _SHORT_AXIS), ("long", _LONG_AXIS)):
        for phrase in phrases:
            if any(window[i:i + len(phrase)] == phrase for i in range(len(window) - len(phrase) + 1)):
                return axis
    return ""


def find_measurements(tokens: Tokens) -> list[Measurement]:
    """Every size with a unit in the sentence, in order: "16 x 11 mm", "16x11 mm", "12mm", "1.2 cm"."""
    lemmas = tokens.lemmas
    n = len(lemmas)
    out: list[Measurement] = []
    i = 0
    while i < n:
        m = _NUMBER.match(lemmas[i])
        if not m:
            i += 1
            continue
        dims = [float(m.group(1))] + [float(d) for d in m.group(2).split("x")[1:]]
        unit = m.group(3)
        j = i + 1
        while unit is None and j < n and _MORE.match(lemmas[j]):
            more = _MORE.match(lemmas[j])
            dims += [float(d) for d in more.group(1).split("x")[1:]]
            unit = more.group(2)
            j += 1
        while unit is None and j + 1 < n and lemmas[j] == "x" and _NUMBER.match(lemmas[j + 1]):  # "16 x 11 mm"
            nxt = _NUMBER.match(lemmas[j + 1])
            dims += [float(nxt.group(1))] + [float(d) for d in nxt.group(2).split("x")[1:]]
            unit = nxt.group(3)
            j += 2
        if unit is None and j < n and lemmas[j] in _UNITS:
            unit = lemmas[j]
            j += 1
        if unit is None:
            i = j
            continue
        start = i
        bound = "="
        for kind, phrases in (("<", _UPPER), (">", _LOWER)):
            length = _ends_with(lemmas, start, phrases)
            if length:
                bound, start = kind, start - length
                break
        scale = _UNITS[unit]
        out.append(Measurement(start, j, tuple(d * scale for d in dims), bound, _axis(lemmas, start, j)))
        i = j
    return out
