"""Negation, uncertainty and history cues and the words they govern (ConText-style, clause-aware).

A cue governs a *scope*, not a fixed window of words:

- a cue before its findings ("no", "without", "clear of", "possible", "question of") reaches
  forward over a whole list ("No A, B, or C is identified") to the end of the sentence, and stops
  early at a terminator ("but", "however", "except", "which", ...), at ``;`` or ``:``, at a new
  clause with its own subject (", the heart is ...", "and there is ...") or where a cue of
  another kind begins;
- a cue after its findings ("is not seen", "was not detected", "cannot be excluded", "is
  unlikely", "?") reaches back over location phrases ("Pleural effusion in the right
  costophrenic angle is not seen") to the start of the sentence, and stops early at a
  terminator, ``;``/``:``, a verb of another clause ("Heart is enlarged, effusion is not seen"),
  or a comma that does not belong to a list ending in "and"/"or";
- a finding written as an observation at a site ("the heart is not enlarged") is negated by a
  negation inside its own span.

When several cues reach a mention, the nearest one decides. Pseudo-cues ("no change in",
"not only") look like negations but are none and hide the cue inside them.
"""

from __future__ import annotations

import dataclasses

from medalign.reports.lexicon import PhraseMatcher, Tokens

NEGATED, UNCERTAIN, IGNORED = "negated", "uncertain", "ignored"

PRE_NEGATION = [
    "no", "not", "without", "negative for", "free of", "clear of", "absence of", "absent", "no evidence of",
    "no sign of", "no signs of", "no finding of", "no findings of", "rules out", "ruled out", "nor", "neither",
    "resolution of", "resolved", "resolving", "interval resolution of", "no longer", "never", "lack of",
    "removal of", "fails to reveal", "no radiographic evidence of", "no ct evidence of",
    "no residual",
    # a negated hedge: the hedge cue inside would otherwise be nearer
    "no findings in favor of", "no finding in favor of", "no findings in favour of", "no findings suggestive of",
    "no finding suggestive of", "no findings suggesting", "no findings to suggest", "no finding to suggest",
    "no evidence to suggest", "no evidence suggesting", "no evidence suggestive of", "nothing to suggest",
    "no findings consistent with", "no findings compatible with", "no sign suggestive of", "no signs suggestive of",
]
POST_NEGATION = [
    "absent", "is absent", "are absent", "not seen", "not identified", "not present", "not demonstrated",
    "not visualized", "not visualised", "not detected", "not appreciated", "not evident", "not noted", "not observed",
    "not apparent", "not visible", "not found", "not shown", "not depicted", "not delineated", "no longer seen",
    "no longer visualized", "no longer visible", "no longer present", "no longer identified", "no longer evident", "no longer apparent",
    "has resolved", "have resolved", "resolved", "has cleared", "have cleared", "cleared", "ruled out", "excluded",
    "has been removed", "have been removed", "removed", "is negative", "are negative", "none", "not * seen",
    "not * identified", "not * visualized", "not * demonstrated", "not * appreciated", "not * evident",
]
PRE_UNCERTAIN = [
    "possible", "possibly", "probable", "probably", "likely", "most likely", "may represent", "may be", "may reflect",
    "may indicate", "might", "could be", "could represent", "could reflect", "suspicious for", "suspicion of",
    "suspicious of", "concerning for", "concern for", "questionable", "question of", "questioned", "suggestive of",
    "suggest", "suggests", "suggesting", "suspected", "suspect", "equivocal", "cannot exclude", "can not exclude",
    "cannot rule out", "can not rule out", "not exclude", "not rule out", "differential includes",
    "differential diagnosis", "differential considerations include", "in favor of", "in favour of", "favor",
    "favored", "favoured", "versus", "vs", "?", "indeterminate", "presumably", "presumed",
    "cannot be excluded", "not excluded", "not be excluded", "cannot entirely exclude", "not entirely excluded",
    "uncertain", "unclear", "doubtful", "appears to represent", "query", "may include", "could include",
    "considerations include", "worrisome for", "could indicate", "might represent", "raises the possibility of",
    "cannot be * excluded", "difficult to * exclude", "question", "would include", "is a possibility", "maybe", "perhaps",
    "less likely", "less probable",
]
#: a condition on the whole statement ("In the appropriate clinical setting, this is compatible with pneumonia"):
#: uncertain up to a terminator, across the new clause that follows its comma
CONDITIONAL = [
    "in the appropriate clinical setting", "in the proper clinical setting", "in the right clinical setting",
    "in the correct clinical setting", "in the appropriate clinical context", "in the right clinical context",
    "in the appropriate setting", "if clinically appropriate",
]
POST_UNCERTAIN = [
    "cannot be excluded", "can not be excluded", "not excluded", "not be excluded", "cannot be ruled out",
    "can not be ruled out", "not ruled out", "cannot be entirely excluded", "not entirely excluded",
    "is suspected", "are suspected", "suspected", "possible", "is possible", "are possible", "versus", "vs", "is likely", "are likely", "likely", "is probable", "is questioned", "questioned", "is unlikely", "are unlikely", "unlikely",
    "is not excluded", "?", "is difficult to exclude", "difficult to exclude", "difficult to * exclude",
    "cannot be * excluded", "not * excluded", "is a possibility", "could have this appearance", "could account for",
    "could explain", "not entirely clear",
    "is uncertain", "is unclear", "is equivocal", "is questionable", "is favored", "favored", "could be present",
    "may be present", "is considered", "not completely excluded",
]
#: a mention in a request or history says nothing about this study (CheXpert's "indication" handling)
PRE_IGNORE = [
    "history of", "evaluate for", "evaluation for", "evaluation of", "assess for", "assessment for", "rule out",
    "r o", "to exclude", "exclude", "indication", "to evaluate", "to assess", "check for", "screening for", "follow up of",
    "correlate clinically for", "clinical correlation for", "to ensure", "could obscure", "may obscure", "obscure",
    "in detecting", "detecting",
]
#: words between "no"/"without" and "change" that make it a statement about time, not a negation:
#: "no significant interval change in the effusion", but "no interstitial changes of edema" negates
_CHANGE_DEGREE = ("significant", "appreciable", "definite", "substantial", "gross", "major", "apparent", "notable",
                  "visible", "measurable", "obvious", "real", "important", "relevant", "material", "meaningful",
                  "marked", "detectable", "radiographic", "further", "other", "considerable", "discernible",
                  "overall", "clinically significant", "dramatic")
_CHANGE_TIME = ("interval", "recent", "short term")
#: phrases that look like cues and are not ("no change in the effusion" means the effusion is still there)
PSEUDO = [
    "no change", "no difference", "no significant difference", "no significant dimensional difference", "not differ",
    "did not differ", "do not differ", "does not differ",
    *(f"{neg} {w} change" for neg in ("no", "without") for w in _CHANGE_DEGREE + _CHANGE_TIME),
    *(f"{neg} {d} {t} change" for neg in ("no", "without") for d in _CHANGE_DEGREE + ("acute",) for t in _CHANGE_TIME + ("radiographic",)),
    "not only", "no increase", "no decrease", "no significant increase", "no significant decrease", "without change",
    "not changed", "no further", "gram negative", "not significantly changed", "not necessarily", "not well defined",
    "not well circumscribed", "not well marginated",
    "not certain whether", "not clear whether", "possible further", "as well as", "to suggest", "to indicate",
]
TERMINATORS = [
    "but", "however", "although", "though", "except", "apart from", "aside from", "which", "whereas", "otherwise",
    "while", "yet", "with the exception of", "other than", "besides", "nevertheless", "although there", "though there",
    ";", ":", "(", ")",
]
#: words of hedges that introduce a list of alternatives ("differential diagnosis includes A, B, C"):
#: their scope runs over the whole list, conjunction or not
_LIST_INTRODUCERS = frozenset({"differential", "include", "includes", "including", "consideration", "considerations"})
#: a coordinator followed by one of these starts a new clause with its own subject
_CLAUSE_START = frozenset({"the", "there", "this", "these", "it", "its", "which", "otherwise"})
_COORDINATORS = frozenset({",", "and", "with"})
#: a negated list ends with its participle: "No effusion seen, dense nodule in the left lung" ends at "seen"
_CLOSERS = frozenset({"seen", "identified", "noted", "demonstrated", "detected", "visualized", "visualised",
                      "appreciated", "observed", "evident", "present"})
#: verbs that end a backward scope when they are not part of the cue ("Heart is enlarged, effusion is not seen")
_VERBS = frozenset({"is", "are", "was", "were", "be", "been", "appear", "appears", "remain", "remains", "seem",
                    "show", "shows", "demonstrate", "demonstrates", "reveal", "reveals", "has", "have", "had"})
#: words that may sit between a finding and a trailing cue and belong to the cue ("is also not seen")
_AUX = frozenset({"is", "are", "was", "were", "be", "been", "has", "have", "had", "also", "now", "currently",
                  "definitely", "clearly", "again", "still", "radiographically", "convincingly", "well"})
_CUE_RANK = {IGNORED: 0, UNCERTAIN: 1, NEGATED: 2}


@dataclasses.dataclass(frozen=True, slots=True)
class Cue:
    """A cue found in a sentence: ``kind`` (negated | uncertain | ignored), ``direction`` (pre | post)
    and its token span ``start .. end - 1``; ``scope`` is the token span it governs."""

    kind: str
    direction: str
    start: int
    end: int
    scope: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ContextRules:
    """Cue phrase lists (the defaults suit radiology reports); pass others to :class:`ContextEngine`."""

    pre_negation: tuple[str, ...] = tuple(PRE_NEGATION)
    post_negation: tuple[str, ...] = tuple(POST_NEGATION)
    pre_uncertain: tuple[str, ...] = tuple(PRE_UNCERTAIN)
    post_uncertain: tuple[str, ...] = tuple(POST_UNCERTAIN)
    pre_ignore: tuple[str, ...] = tuple(PRE_IGNORE)
    conditional: tuple[str, ...] = tuple(CONDITIONAL)
    pseudo: tuple[str, ...] = tuple(PSEUDO)
    terminators: tuple[str, ...] = tuple(TERMINATORS)


class ContextEngine:
    """Finds the cues of a sentence and decides which one governs a mention."""

    def __init__(self, rules: ContextRules | None = None) -> None:
        rules = rules or ContextRules()
        self._cues: PhraseMatcher[tuple[str, str]] = PhraseMatcher()
        self._cues.add(rules.pre_negation, (NEGATED, "pre"))
        self._cues.add(rules.post_negation, (NEGATED, "post"))
        self._cues.add(rules.pre_uncertain, (UNCERTAIN, "pre"))
        self._cues.add(rules.post_uncertain, (UNCERTAIN, "post"))
        self._cues.add(rules.pre_ignore, (IGNORED, "pre"))
        self._cues.add(rules.conditional, (UNCERTAIN, "condition"))
        self._cues.add(rules.pseudo, ("pseudo", ""))
        self._cues.add(rules.terminators, ("terminate", ""))

    def cues(self, tokens: Tokens) -> list[Cue]:
        """Every cue of the sentence with its scope."""
        lemmas = tokens.lemmas
        n = len(lemmas)
        found = self._cues.matches(lemmas)
        if not found:
            return []
        # at one place the longest phrase wins; a cue inside a pseudo-cue or a longer cue is none
        found.sort(key=lambda m: (m[0], m[0] - m[1]))
        kept: list[tuple[int, int, tuple[str, str]]] = []
        last, last_span = 0, (-1, -1)
        for start, end, payload in found:
            if start >= last or (start, end) == last_span:  # "resolved" before or after a finding: both readings
                kept.append((start, end, payload))
                last, last_span = end, (start, end)
        stops = [False] * (n + 1)
        stops[n] = True
        for start, end, (kind, _) in kept:
            if kind == "terminate":
                for i in range(start, end):
                    stops[i] = True
        terminated = list(stops)  # before clause starts are added: where a condition's scope ends
        disjunction = False  # an "or"/"nor" seen: the list it closes is over, so ", and" starts a new clause
        for i in range(n - 1):
            disjunction = disjunction or lemmas[i] in ("or", "nor")
            if lemmas[i] in _COORDINATORS and lemmas[i + 1] in _CLAUSE_START:
                stops[i] = True
            elif disjunction and lemmas[i] == "," and lemmas[i + 1] == "and":
                stops[i] = True
            elif lemmas[i] in _CLOSERS and lemmas[i + 1] in _COORDINATORS:
                stops[i + 1] = True
        pre_starts = [(s, k) for s, _, (k, d) in kept if d == "pre"]
        out: list[Cue] = []
        for start, end, (kind, direction) in kept:
            if kind in ("pseudo", "terminate"):
                continue
            if direction == "condition":
                stop = end
                while not terminated[stop]:
                    stop += 1
                out.append(Cue(kind, "pre", start, end, (end, stop)))
            elif direction == "pre":
                stop = end
                while not stops[stop] and not any(s == stop and k != kind for s, k in pre_starts):
                    stop += 1
                if kind == UNCERTAIN and lemmas[start] in ("?", "versus", "vs"):
                    stop = min(stop, end + 4)  # "? pneumonia", "atelectasis versus pneumonia": a short reach
                elif kind == UNCERTAIN and not _LIST_INTRODUCERS.intersection(lemmas[start:end]):
                    stop = _list_end(lemmas, end, stop)
                out.append(Cue(kind, direction, start, end, (end, stop)))
            else:
                begin = start
                while begin > 0 and lemmas[begin - 1] in _AUX:  # "is also not seen": the auxiliaries join the cue
                    begin -= 1
                first = _scope_back(lemmas, begin, stops)
                if lemmas[start] in ("?", "versus", "vs"):
                    first = max(first, begin - 4)
                out.append(Cue(kind, direction, begin, end, (first, begin)))
        return out

    @staticmethod
    def decide(cues: list[Cue], start: int, end: int) -> Cue | None:
        """The cue governing the mention at tokens ``start .. end - 1``: the nearest whose scope holds
        the whole mention, or a negation inside the mention's own span; ``None`` when none does."""
        best: tuple[int, int, Cue] | None = None
        for cue in cues:
            a, b = cue.scope
            if cue.direction == "pre" and a <= start and end <= b:
                distance = start - cue.end
            elif cue.direction == "post" and a <= start and end <= b:
                distance = cue.start - end
            elif cue.kind == NEGATED and start < cue.start and cue.end < end:
                distance = 0
            else:
                continue
            key = (distance, _CUE_RANK[cue.kind])
            if best is None or key < best[:2]:
                best = (*key, cue)
        return best[2] if best else None


def _list_end(lemmas: tuple[str, ...], end: int, stop: int) -> int:
    """Where a hedge's forward scope ends: a comma ends it unless an "and"/"or" follows before
    ``stop`` ("suggestive of edema, effusion or pneumonia" hedges all three; "in favor of edema,
    lymphadenopathy" hedges the edema, and the lymphadenopathy is a diagnosis of its own)."""
    for i in range(end, stop):
        if lemmas[i] == "," and not any(w in ("and", "or", "nor") for w in lemmas[i + 1:stop]):
            return i
    return stop


def _scope_back(lemmas: tuple[str, ...], begin: int, stops: list[bool]) -> int:
    """First token of a trailing cue's scope, scanning back from ``begin``."""
    i = begin - 1
    listed = False  # an "and"/"or" seen between here and the cue: commas belong to a list
    while i >= 0:
        w = lemmas[i]
        if stops[i] or w in _VERBS:
            return i + 1
        if w in ("and", "or", "nor"):
            listed = True
        elif w == "," and not listed and not _short_list_item(lemmas, i, stops):
            return i + 1
        i -= 1
    return 0


def _short_list_item(lemmas: tuple[str, ...], comma: int, stops: list[bool]) -> bool:
    """Whether the words before ``comma`` (back to the previous comma or the sentence start) are an
    item of a list written without "and": at most three words, no verb, no clause boundary.
    "Pericardial, pleural effusion was not detected" and "Pneumonia, pleural effusion, pneumothorax
    were not detected" negate every item; "Consolidation is present, no effusion was seen" does not."""
    j, words = comma - 1, 0
    while j >= 0 and lemmas[j] != ",":
        if stops[j] or lemmas[j] in _VERBS:
            return False
        words += 1
        if words > 3:
            return False
        j -= 1
    return words > 0
