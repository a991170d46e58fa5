"""Rule-based finding labeler: 1 present, 0 negated, -1 uncertain, ``None`` not mentioned.

Each sentence of the FINDINGS and IMPRESSION sections is read as lemmas; a finding is mentioned
by one of its phrases or by one of its concept patterns (an observation at a site, see
:class:`~medalign.reports.vocabulary.ConceptPattern`), and the cue whose scope holds the mention decides
its label (:mod:`medalign.reports.context`). Negation and uncertainty never reach across a sentence.
Over a report a present mention wins, then an uncertain one, then a negated one.
"""

from __future__ import annotations

import dataclasses
import re

from medalign.reports.context import IGNORED, NEGATED, UNCERTAIN, ContextEngine, Cue
from medalign.reports.lexicon import PhraseMatcher, Tokens, tokenize
from medalign.reports.measure import Measurement, find_measurements
from medalign.reports.report_text import reported_text
from medalign.reports.vocabulary import Vocabulary

_LABEL = {NEGATED: 0, UNCERTAIN: -1}
#: sentence ends: . ! (not inside decimals), line breaks, and a "?" that a capitalised sentence follows
_SENTENCE = re.compile(r"(?<=\?)\s+(?=[A-Z])|(?<!\d)[.!](?!\d)|\n")
#: words no concept pattern reaches across (a new sentence-like unit inside one sentence)
_PATTERN_BREAK = frozenset({";", ":", "but", "however", "although", "whereas", "while", "which"})
#: a size reaches its observation across "which" ("lymph nodes, the largest of which measures 14 mm")
_SIZE_BREAK = _PATTERN_BREAK - {"which"}


@dataclasses.dataclass(frozen=True)
class Mention:
    """One mention of a finding in a sentence, with what decided its label (for audits)."""

    finding: str
    label: int  # 1 present, 0 negated, -1 uncertain
    sentence: str
    trigger: tuple[int, int]  # character span of the mention in ``sentence``
    cue: tuple[int, int] | None  # character span of the deciding cue, if any
    cue_kind: str | None  # negated | uncertain | "negative phrase" | "below size threshold"


def labeler_sentences(text: str) -> list[str]:
    """The sentences the labeler reads (``;`` and ``?`` stay inside: they are cues and bounds)."""
    return [s.strip() for s in _SENTENCE.split(text) if s and s.strip()]


class ReportLabeler:
    """Labels reports against a :class:`Vocabulary`."""

    def __init__(self, vocab: Vocabulary, context: ContextEngine | None = None) -> None:
        self.vocab = vocab
        self.context = context or ContextEngine()
        # one matcher for every phrase of the vocabulary; payload (kind, finding, pattern, group)
        self._phrases: PhraseMatcher[tuple[str, int, int, int]] = PhraseMatcher()
        for k, f in enumerate(vocab.findings):
            self._phrases.add(f.synonyms, ("synonym", k, -1, -1))
            self._phrases.add(f.negative_phrases, ("negative", k, -1, -1))
            self._phrases.add(f.exclude, ("exclude", k, -1, -1))
            self._phrases.add(f.elsewhere, ("elsewhere", k, -1, -1))
            self._phrases.add(f.here, ("here", k, -1, -1))
            for j, p in enumerate(f.patterns):
                for g, group in enumerate(p.groups):
                    self._phrases.add(group, ("group", k, j, g))
                self._phrases.add(p.unless, ("unless", k, j, -1))
        self._first_words = self._phrases.first_words()

    def label(self, text: str) -> dict[str, int | None]:
        """``{finding: 1 | 0 | -1 | None}`` for one report. Only FINDINGS and IMPRESSION count when the
        report has headers (a history of pneumonia or a request to exclude it is not a finding)."""
        return self.report_labels(self.mentions(text))

    def report_labels(self, mentions: list[Mention]) -> dict[str, int | None]:
        """A report's labels from its mentions: present if any says so, else uncertain, else negated."""
        found: dict[str, set[int]] = {name: set() for name in self.vocab.names}
        for m in mentions:
            found[m.finding].add(m.label)
        return {name: 1 if 1 in s else -1 if -1 in s else 0 if 0 in s else None for name, s in found.items()}

    def mentions(self, text: str) -> list[Mention]:
        """Every labelled mention of every finding in the report's findings and impression."""
        out: list[Mention] = []
        for sentence in labeler_sentences(reported_text(text)):
            out.extend(self.sentence_mentions(sentence))
        return out

    def sentence_mentions(self, sentence: str) -> list[Mention]:
        """The labelled mentions of one sentence."""
        tokens = tokenize(sentence)
        if not self._first_words.intersection(tokens.lemmas) and not self._phrases.has_prefixes:
            return []
        matches = self._phrases.matches(tokens.lemmas)
        if not matches:
            return []
        names = self.vocab.names
        spans: list[tuple[int, int, int, bool]] = []  # (start, end, finding, is a phrase)
        negatives: list[tuple[int, int, int]] = []
        excluded: dict[int, list[tuple[int, int]]] = {}
        groups: dict[tuple[int, int], dict[int, list[tuple[int, int]]]] = {}
        unless: dict[tuple[int, int], list[tuple[int, int]]] = {}
        organs: dict[str, set[int]] = {"elsewhere": set(), "here": set()}
        for start, end, (kind, k, j, g) in matches:
            if kind in organs:
                organs[kind].add(k)
            elif kind == "synonym":
                spans.append((start, end, k, True))
            elif kind == "negative":
                negatives.append((start, end, k))
            elif kind == "exclude":
                excluded.setdefault(k, []).append((start, end))
            elif kind == "group":
                groups.setdefault((k, j), {}).setdefault(g, []).append((start, end))
            else:
                unless.setdefault((k, j), []).append((start, end))
        sized: list[tuple[int, int, int, float, int]] = []  # observations a size decides: (start, end, finding, threshold, reach)
        for (k, j), by_group in groups.items():
            pattern = self.vocab.findings[k].patterns[j]
            for a, b in self._pattern_spans(tokens, k, j, by_group, unless.get((k, j), [])):
                if pattern.min_size_mm is None:
                    spans.append((a, b, k, False))
                else:
                    sized.append((a, b, k, pattern.min_size_mm, pattern.within))
        below: list[tuple[int, int, int]] = []
        if sized:
            for a, b, k, is_size in _sized_mentions(tokens, sized, spans):
                if is_size:
                    spans.append((a, b, k, False))
                else:
                    below.append((a, b, k))
        elsewhere = organs["elsewhere"] - organs["here"]  # the sentence is about another organ
        mentions = [m for m in _drop_nested(spans, excluded) if m[2] not in elsewhere]
        cues = self.context.cues(tokens) if mentions else []
        out: list[Mention] = []
        for start, end, k in negatives:
            out.append(self._mention(names[k], 0, tokens, start, end, None, "negative phrase"))
        for start, end, k in below:
            out.append(self._mention(names[k], 0, tokens, start, end, None, "below size threshold"))
        for start, end, k in mentions:
            cue = self.context.decide(cues, start, end)
            if cue is not None and cue.kind == IGNORED:
                continue
            label = 1 if cue is None else _LABEL[cue.kind]
            out.append(self._mention(names[k], label, tokens, start, end, cue, cue.kind if cue else None))
        return out

    def _pattern_spans(self, tokens: Tokens, k: int, j: int, by_group: dict[int, list[tuple[int, int]]],
                       unless: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Token spans where pattern ``j`` of finding ``k`` is complete: each observation with the
        nearest phrase of every other group, within reach and not across a clause break."""
        pattern = self.vocab.findings[k].patterns[j]
        if len(by_group) < len(pattern.groups):
            return []
        lemmas = tokens.lemmas
        out = []
        for obs_start, obs_end in by_group[0]:
            start, end = obs_start, obs_end
            for g in range(1, len(pattern.groups)):
                best = None
                for a, b in by_group[g]:
                    if a < obs_end and b > obs_start:
                        continue  # the same words cannot be both observation and site
                    gap = a - obs_end if a >= obs_end else obs_start - b
                    if gap <= pattern.within and (best is None or gap < best[0]):
                        best = (gap, a, b)
                if best is None:
                    break
                start, end = min(start, best[1]), max(end, best[2])
            else:
                if any(w in _PATTERN_BREAK for w in lemmas[start:end]):
                    continue
                if any(start <= a and b <= end and not (obs_start <= a < obs_end) for a, b in unless):
                    continue
                out.append((start, end))
        return out

    @staticmethod
    def _mention(name: str, label: int, tokens: Tokens, start: int, end: int, cue: Cue | None, kind: str | None) -> Mention:
        trigger = (tokens.starts[start], tokens.ends[end - 1])
        cue_span = (tokens.starts[cue.start], tokens.ends[cue.end - 1]) if cue is not None else None
        return Mention(name, label, tokens.text, trigger, cue_span, kind)


def _sized_mentions(tokens: Tokens, sized: list[tuple[int, int, int, float, int]],
                    others: list[tuple[int, int, int, bool]]) -> list[tuple[int, int, int, bool]]:
    """Observations of size patterns decided by the nearest size within reach: ``(start, end,
    finding, True)`` at or above the threshold (a mention cues then decide), ``False`` below it.
    A size nearer to another finding's mention ("a 12 mm nodule beside a lymph node") is that one's."""
    measurements = find_measurements(tokens)
    if not measurements:
        return []
    lemmas = tokens.lemmas
    heads = [(a, b) for a, b, _, _ in others] + [(a, b) for a, b, _, _, _ in sized]

    def gap(a: int, b: int, m: Measurement) -> int:
        return m.start - b if m.start >= b else a - m.end if m.end <= a else 0

    out = []
    for a, b, k, threshold, within in sized:
        candidates: list[tuple[int, Measurement]] = []
        for m in measurements:
            g = gap(a, b, m)
            lo, hi = (b, m.start) if m.start >= b else (m.end, a)
            if g > within or any(w in _SIZE_BREAK for w in lemmas[lo:hi]):
                continue
            if any(gap(x, y, m) < g for x, y in heads if (x, y) != (a, b)):
                continue
            candidates.append((g, m))
        # the nearest size that says something: "22 mm in long axis and 8 mm in short axis" is decided by the 8 mm
        for _, m in sorted(candidates, key=lambda c: c[0]):
            verdict = m.compare(threshold)
            if verdict is not None:
                out.append((min(a, m.start), max(b, m.end), k, bool(verdict)))
                break
    return out


def _drop_nested(spans: list[tuple[int, int, int, bool]], excluded: dict[int, list[tuple[int, int]]]) -> list[tuple[int, int, int]]:
    """Mentions of a finding that lie inside one of its ``exclude`` phrases or inside a longer
    phrase ("effusion" inside "pericardial effusion" or "pleural effusion") or inside another finding's
    pattern ("effusion ... in the pericardial space") are dropped, and so is a pattern over words a
    phrase of its finding already names: one mention per place."""
    out = []
    seen = set()
    for a, b, k, is_phrase in spans:
        if (a, b, k) in seen:
            continue
        if any(x <= a and b <= y for x, y in excluded.get(k, ())):
            continue
        if any(phrase and x <= a and b <= y and y - x > b - a for x, y, n, phrase in spans):
            continue
        if is_phrase and b - a == 1 and any(not phrase and n != k and x <= a and b <= y for x, y, n, phrase in spans):
            continue  # a one-word phrase inside another finding's pattern ("effusion ... in the pericardial space") is that finding's
        if not is_phrase and any(phrase and n == k and x < b and a < y for x, y, n, phrase in spans):
            continue  # a pattern over words a phrase of the same finding already names: one mention
        seen.add((a, b, k))
        out.append((a, b, k))
    return out
