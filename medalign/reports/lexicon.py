"""Words of report text as lemmas, and phrases matched on them.

Report sentences are compared word by word on lemmas, so a vocabulary phrase written once matches
plurals ("nodules", "bullae", "opacities"), hyphenated compounds ("effusion-thickening") and any
letter case. A phrase word ending in ``*`` matches any word starting with it (``calcif*`` matches
"calcified", "calcification", "calcific"); a lone ``*`` is one optional word of any kind
("heart is * enlarged" matches "heart is mildly enlarged").

A rule-based lemmatizer is enough here (and 50x faster than a tagger): the words that matter are
nouns of radiology, whose plurals follow a few rules plus a short list of Latin and Greek ones.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

#: words, numbers (decimals kept whole) and the punctuation that bounds scopes; hyphens and
#: slashes separate words and are dropped
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|[,;:?()]")

_IRREGULAR = {
    "apices": "apex", "vertices": "vertex", "foci": "focus", "bronchi": "bronchus", "emboli": "embolus",
    "hila": "hilum", "diverticula": "diverticulum", "sequelae": "sequela", "bullae": "bulla", "septa": "septum",
    "atria": "atrium", "calculi": "calculus", "nuclei": "nucleus", "lumina": "lumen", "metastases": "metastasis",
    "stenoses": "stenosis", "bronchiectases": "bronchiectasis", "anastomoses": "anastomosis", "diagnoses": "diagnosis",
    "prostheses": "prosthesis", "thromboses": "thrombosis", "fibroses": "fibrosis", "lymphadenopathies": "lymphadenopathy",
    "drusen": "drusen", "media": "media", "data": "data", "men": "man", "women": "woman", "teeth": "tooth",
    "has": "has", "was": "was", "does": "does", "gas": "gas", "lens": "lens",
}
#: endings whose final ``s`` is not a plural (atelectasis, status, process, nervous, hilus, thorax-like words)
_NOT_PLURAL = ("ss", "us", "is", "ous", "ys", "as")


def lemma(word: str) -> str:
    """Singular lower-case form of one lower-case word: ``"opacities" -> "opacity"``."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) <= 3 or word.endswith(_NOT_PLURAL) or not word[-1].isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("ae") and len(word) > 4:
        return word[:-1]
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    """A sentence as lemmas with the character span each came from: ``lemmas[i]`` is
    ``text[starts[i]:ends[i]]`` lemmatised."""

    text: str
    lemmas: tuple[str, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.lemmas)

    def span_text(self, start: int, end: int) -> str:
        """The original characters of tokens ``start .. end - 1``."""
        return self.text[self.starts[start] : self.ends[end - 1]] if end > start else ""


_LEMMA_CACHE: dict[str, str] = {}


def tokenize(text: str) -> Tokens:
    """Lemmas of ``text`` (lower-cased first) with their character spans."""
    lemmas, starts, ends = [], [], []
    cache = _LEMMA_CACHE
    for m in _TOKEN.finditer(text.lower()):
        w = m.group()
        lem = cache.get(w)
        if lem is None:
            lem = lemma(w)
            if len(cache) < 200_000:  # bounded: numbers and typos would grow it without end
                cache[w] = lem
        lemmas.append(lem)
        starts.append(m.start())
        ends.append(m.end())
    return Tokens(text, tuple(lemmas), tuple(starts), tuple(ends))


P = TypeVar("P")
#: one word of a compiled phrase: ("=", lemma), ("^", prefix) or ("?", "") for one optional word
_Word = tuple[str, str]


def compile_phrase(phrase: str) -> tuple[_Word, ...]:
    """A phrase as words to match: lemmas, ``prefix*`` and lone ``*`` (one optional word)."""
    words: list[_Word] = []
    for raw in re.findall(r"[a-z0-9]+\*?|\*|[,;:?()]", phrase.lower()):
        if raw == "*":
            words.append(("?", ""))
        elif raw.endswith("*"):
            words.append(("^", raw[:-1]))
        else:
            words.append(("=", lemma(raw)))
    if not words or words[0][0] == "?":
        raise ValueError(f"phrase {phrase!r} must start with a word")
    return tuple(words)


class PhraseMatcher(Generic[P]):
    """All occurrences of many phrases in a token sequence, each with the payload it was added with.

    Lookup is by the phrase's first two lemmas (or its first, when the second is a wildcard), so the
    cost grows with the sentence, not with the number of phrases."""

    def __init__(self) -> None:
        self._by_first: dict[str, list[tuple[tuple[_Word, ...], P]]] = {}
        self._by_pair: dict[tuple[str, str], list[tuple[tuple[_Word, ...], P]]] = {}
        self._by_prefix: list[tuple[str, tuple[_Word, ...], P]] = []

    def add(self, phrases: Iterable[str], payload: P) -> None:
        """Add phrases that all map to ``payload``."""
        for phrase in phrases:
            words = compile_phrase(phrase)
            kind, first = words[0]
            if kind == "=" and len(words) > 1 and words[1][0] == "=":
                self._by_pair.setdefault((first, words[1][1]), []).append((words, payload))
            elif kind == "=":
                self._by_first.setdefault(first, []).append((words, payload))
            else:
                self._by_prefix.append((first, words, payload))

    def __bool__(self) -> bool:
        return bool(self._by_first or self._by_pair or self._by_prefix)

    @property
    def has_prefixes(self) -> bool:
        """Whether some phrase starts with a ``prefix*`` word (no first-word pre-filter then)."""
        return bool(self._by_prefix)

    def first_words(self) -> set[str]:
        """Exact first lemmas of the phrases (for a quick pre-filter)."""
        return set(self._by_first) | {first for first, _ in self._by_pair}

    def matches(self, lemmas: Sequence[str]) -> list[tuple[int, int, P]]:
        """``[(start, end, payload)]`` token spans of every match (overlaps included)."""
        out: list[tuple[int, int, P]] = []
        n = len(lemmas)
        by_first, by_pair, by_prefix = self._by_first, self._by_pair, self._by_prefix
        for i in range(n):
            w = lemmas[i]
            for cands in (by_first.get(w), by_pair.get((w, lemmas[i + 1])) if by_pair and i + 1 < n else None):
                if cands:
                    for words, payload in cands:
                        end = _match_at(words, lemmas, i, n)
                        if end:
                            out.append((i, end, payload))
            for prefix, words, payload in by_prefix:
                if w.startswith(prefix):
                    end = _match_at(words, lemmas, i, n)
                    if end:
                        out.append((i, end, payload))
        return out


def _match_at(words: tuple[_Word, ...], lemmas: Sequence[str], i: int, n: int) -> int:
    """End index of ``words`` matched from token ``i`` (0 if it does not match); lone ``*``
    words may match one word or none."""
    return _match_from(words, 0, lemmas, i, n)


def _match_from(words: tuple[_Word, ...], k: int, lemmas: Sequence[str], i: int, n: int) -> int:
    while k < len(words):
        kind, value = words[k]
        if kind == "?":
            # one optional word of any kind, but never a negation (keeps "heart is not enlarged" out)
            if i < n and lemmas[i] not in _NEGATION_WORDS and lemmas[i][0].isalnum():
                end = _match_from(words, k + 1, lemmas, i + 1, n)
                if end:
                    return end
            k += 1
            continue
        if i >= n:
            return 0
        w = lemmas[i]
        if (kind == "=" and w != value) or (kind == "^" and not w.startswith(value)):
            return 0
        i += 1
        k += 1
    return i


_NEGATION_WORDS = frozenset({"no", "not", "without", "never", "nor", "neither", "none"})
