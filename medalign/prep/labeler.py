"""Rule-based finding labeler (NegEx / CheXpert style): 1 present, 0 negated, -1 uncertain,
``None`` not mentioned. Negation and uncertainty never reach across a sentence."""

from __future__ import annotations

import re
from collections.abc import Iterable

from medalign.prep.report_text import reported_text, split_sentences
from medalign.prep.vocab import Vocabulary

PRE_NEGATION = [
    "no", "not", "without", "negative for", "free of", "absence of", "absent", "no evidence of",
    "no signs of", "no sign of", "rules out", "ruled out", "nor", "neither", "denies", "resolution of", "resolved",
]
POST_NEGATION = [
    "is absent", "are absent", "not seen", "not identified", "not present", "not demonstrated",
    "not visualized", "has resolved", "have resolved", "resolved", "ruled out", "is not", "are not", "was not",
]
PSEUDO_NEGATION = ["no change", "no significant change", "no interval change", "not only", "no increase", "no decrease", "without change"]
PRE_UNCERTAIN = [
    "possible", "possibly", "probable", "probably", "likely", "may represent", "may be", "might",
    "suspicious for", "concerning for", "questionable", "question of", "suggestive of", "suggest",
    "suspected", "equivocal", "cannot exclude", "can not exclude", "differential includes", "versus", "unlikely",
]
POST_UNCERTAIN = [
    "cannot be excluded", "can not be excluded", "not excluded", "cannot be ruled out", "can not be ruled out", "is suspected",
    "versus", "vs", "is likely", "are likely", "is possible", "is probable", "is unlikely", "are unlikely", "is questioned",
]
#: a mention in a request or history context says nothing about this study (CheXpert's "indication" handling)
PRE_IGNORE = ["history of", "evaluate for", "evaluation for", "assess for", "assessment for", "rule out", "to exclude", "indication"]
IGNORE_WINDOW = 4
TERMINATORS = ["but", "however", "although", "though", "except", "apart from", "aside from", "which", "whereas", "otherwise", "while"]
#: how many words a pre-negation cue reaches forward (long enough for "no A, B or C")
NEGATION_WINDOW = 8
UNCERTAIN_WINDOW = 6


def _phrase_pattern(phrases: Iterable[str], plural: bool = False) -> re.Pattern:
    """Alternation of phrases, longest first; words may be joined by spaces or hyphens and a
    ``*`` word stands for one optional word ("heart is * enlarged" matches "heart is mildly enlarged")."""
    alts = sorted(
        {re.escape(p.lower()).replace(r"\ ", r"[\s-]+").replace(r"\*[\s-]+", r"(?:(?!(?:not|no|never|without)\b)[\w-]+\s+)?") for p in phrases},
        key=len,
        reverse=True,
    )
    suffix = r"(?:s|es)?" if plural else ""
    return re.compile(r"\b(?:" + "|".join(alts) + r")" + suffix + r"\b")


_PRE_NEG = _phrase_pattern(PRE_NEGATION)
_POST_NEG = _phrase_pattern(POST_NEGATION)
_PSEUDO = _phrase_pattern(PSEUDO_NEGATION)
_PRE_UNC = _phrase_pattern(PRE_UNCERTAIN)
_POST_UNC = _phrase_pattern(POST_UNCERTAIN)
_PRE_IGNORE = _phrase_pattern(PRE_IGNORE)
_TERM = _phrase_pattern(TERMINATORS)


def _words(text: str) -> int:
    return len(text.split())


def _cue_before(sentence: str, start: int, cue: re.Pattern, window: int) -> bool:
    """A cue ends before ``start`` within ``window`` words, with no terminator in between."""
    head = sentence[:start]
    pseudo_spans = [m.span() for m in _PSEUDO.finditer(head)]
    for m in cue.finditer(head):
        if any(a <= m.start() < b for a, b in pseudo_spans):
            continue
        between = head[m.end() :]
        if _words(between) <= window and not _TERM.search(between):
            return True
    return False


def _cue_after(sentence: str, end: int, cue: re.Pattern, window: int = 4) -> bool:
    """A cue starts after ``end`` within ``window`` words, with no terminator in between."""
    tail = sentence[end:]
    m = cue.search(tail)
    return bool(m) and _words(tail[: m.start()]) <= window and not _TERM.search(tail[: m.start()])


class ReportLabeler:
    """Labels reports against a :class:`Vocabulary`."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._mention = {f.name: _phrase_pattern(f.synonyms, plural=True) for f in vocab.findings}
        self._negative = {f.name: _phrase_pattern(f.negative_phrases) for f in vocab.findings if f.negative_phrases}

    def mention_label(self, sentence: str, start: int, end: int) -> int | None:
        """Label of one mention spanning ``sentence[start:end]`` (sentence lower-cased); ``None`` when
        the mention is a request or history ("evaluate for nodule", "history of effusion")."""
        if _cue_before(sentence, start, _PRE_IGNORE, IGNORE_WINDOW):
            return None
        if _cue_after(sentence, end, _POST_UNC) or _cue_before(sentence, start, _PRE_UNC, UNCERTAIN_WINDOW):
            return -1
        if _cue_before(sentence, start, _PRE_NEG, NEGATION_WINDOW) or _cue_after(sentence, end, _POST_NEG):
            return 0
        return 1

    def label(self, text: str) -> dict[str, int | None]:
        """``{finding: 1 | 0 | -1 | None}``; a positive mention anywhere wins, then uncertain, then negated.
        Only FINDINGS and IMPRESSION count when the report has headers (a history of pneumonia or a
        request to exclude it is not a finding)."""
        found: dict[str, set[int]] = {name: set() for name in self.vocab.names}
        for sentence in split_sentences(reported_text(text).lower()):
            for name, pattern in self._negative.items():
                if pattern.search(sentence):
                    found[name].add(0)
            mentions = [(m.start(), m.end(), name) for name, pattern in self._mention.items() for m in pattern.finditer(sentence)]
            for start, end, name in mentions:
                # "effusion" inside "pericardial effusion" belongs to the longer finding's mention
                if any(n != name and a <= start and end <= b and b - a > end - start for a, b, n in mentions):
                    continue
                label = self.mention_label(sentence, start, end)
                if label is not None:
                    found[name].add(label)
        out: dict[str, int | None] = {}
        for name, labels in found.items():
            out[name] = 1 if 1 in labels else -1 if -1 in labels else 0 if 0 in labels else None
        return out
