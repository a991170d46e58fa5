"""Finding vocabularies: names, synonyms, negative phrases and zero-shot prompts (YAML)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from medalign.config import from_dict, read_yaml, resolve_config_path
from medalign.errors import ConfigError, config_key


@dataclasses.dataclass
class PromptPair:
    """Zero-shot prompts stating a finding's presence and its absence; a list is a prompt
    ensemble whose text embeddings are averaged."""

    positive: str | list[str]
    negative: str | list[str]

    def validate(self, where: str) -> None:
        for side in ("positive", "negative"):
            value = getattr(self, side)
            if not value or (isinstance(value, list) and not all(isinstance(v, str) and v.strip() for v in value)):
                raise ConfigError.at(where, side, "needs a non-empty prompt or list of prompts")

    @property
    def positives(self) -> list[str]:
        """The positive prompts as a list."""
        return [self.positive] if isinstance(self.positive, str) else list(self.positive)

    @property
    def negatives(self) -> list[str]:
        """The negative prompts as a list."""
        return [self.negative] if isinstance(self.negative, str) else list(self.negative)


@dataclasses.dataclass
class ConceptPattern:
    """A finding described as an observation at a site, within one clause: every group given
    (``observation``, ``site``, ``qualifier``) must have a phrase among at most ``within`` words
    of the observation, in any order ("calcified plaques in the coronary arteries", "coronary
    artery calcifications"). Phrases are matched on lemmas: plurals and hyphens do not matter;
    ``calcif*`` matches any word starting so. A phrase of ``unless`` between them breaks the match
    ("enlarged lymph node next to the heart" is no enlarged heart).

    With ``min_size_mm`` the pattern also needs a size written within ``within`` words ("lymph
    nodes, the largest measuring 16 x 11 mm", "short axis of 13 mm"), the nearest to the
    observation: a short axis (the smaller of "A x B") at or above the threshold mentions the
    finding, one below it ("up to 8 mm", "less than 1 cm") states its absence."""

    observation: list[str]
    site: list[str] = dataclasses.field(default_factory=list)
    qualifier: list[str] = dataclasses.field(default_factory=list)
    within: int = 8
    unless: list[str] = dataclasses.field(default_factory=list)
    min_size_mm: float | None = None

    def validate(self, where: str) -> None:
        if not self.observation:
            raise ConfigError.at(where, "observation", "needs at least one phrase")
        if self.within < 1:
            raise ConfigError.at(where, "within", "must be at least 1")
        if self.min_size_mm is not None and not self.min_size_mm > 0:
            raise ConfigError.at(where, "min_size_mm", "must be a size in mm above 0")
        for group in ("observation", "site", "qualifier", "unless"):
            _check_phrases(getattr(self, group), config_key(where, group))

    @property
    def groups(self) -> list[list[str]]:
        """The phrase groups that must all be present: observation first."""
        return [g for g in (self.observation, self.site, self.qualifier) if g]


def _check_phrases(phrases: list[str], where: str) -> None:
    from medalign.reports.lexicon import compile_phrase

    for p in phrases:
        try:
            compile_phrase(p)
        except ValueError as e:
            raise ConfigError.at(where, "", str(e)) from None


@dataclasses.dataclass
class Finding:
    """One finding: its canonical name, the phrases and concept patterns that mention it, phrases
    that state its absence outright, phrases that look like it and are not, and its prompts."""

    name: str
    synonyms: list[str] = dataclasses.field(default_factory=list)
    patterns: list[ConceptPattern] = dataclasses.field(default_factory=list)
    negative_phrases: list[str] = dataclasses.field(default_factory=list)
    #: phrases containing a mention that is not this finding ("mass effect", "pericardial effusion")
    exclude: list[str] = dataclasses.field(default_factory=list)
    #: other organs: in a sentence that names one of these and none of ``here``, a mention is not this
    #: finding ("a nodular lesion in the left adrenal gland", "Schmorl nodes")
    elsewhere: list[str] = dataclasses.field(default_factory=list)
    #: this finding's own organ (lung, lobe, parenchyma): naming it keeps the mentions of a sentence
    here: list[str] = dataclasses.field(default_factory=list)
    prompts: PromptPair | None = None

    def validate(self, where: str) -> None:
        for group in ("synonyms", "negative_phrases", "exclude", "elsewhere", "here"):
            _check_phrases(getattr(self, group), config_key(where, group))

    def prompt_pair(self) -> PromptPair:
        """The configured prompts, else ones built from the name."""
        if self.prompts is not None:
            return self.prompts
        return PromptPair(positive=f"There is {self.name}.", negative=f"No {self.name}.")


@dataclasses.dataclass
class Vocabulary:
    """An ordered list of findings; order fixes label columns everywhere."""

    findings: list[Finding]

    def validate(self, where: str) -> None:
        names = [f.name.strip().lower() for f in self.findings]
        if not names:
            raise ConfigError.at(where, "findings", "vocabulary has no findings")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError.at(where, "findings", f"duplicate finding '{dup[0]}'")
        for f in self.findings:
            if not f.synonyms and not f.patterns:
                f.synonyms = [f.name]

    @property
    def names(self) -> list[str]:
        """Finding names in order."""
        return [f.name for f in self.findings]


def load_vocabulary(name_or_path: str | os.PathLike) -> Vocabulary:
    """Load a vocabulary YAML file or preset name under ``configs/vocab/`` (strict). A ``base:`` key
    starts from another vocabulary: each finding listed replaces the base's finding of that name
    (whole), in the base's order; a new name is appended (``configs/vocab/ct_rate.yaml``)."""
    path = resolve_config_path(name_or_path, "vocab")
    return from_dict(Vocabulary, _vocabulary_data(path, []), where=Path(path).name)


def _vocabulary_data(path: Path, chain: list[Path]) -> dict:
    """The YAML mapping of ``path`` with its ``base:`` chain resolved."""
    if path in chain:
        raise ConfigError(f"{Path(path).name}: base chain loops ({' -> '.join(p.name for p in [*chain, path])})")
    data = read_yaml(path)
    if "base" not in data:
        return data
    base = _vocabulary_data(resolve_config_path(str(data.pop("base")), "vocab"), [*chain, path])
    own = data.pop("findings", []) or []
    if not isinstance(own, list) or not all(isinstance(f, dict) and "name" in f for f in own):
        raise ConfigError.at(Path(path).name, "findings", "expected a list of findings, each with a name")
    replaced = {str(f["name"]).strip().lower(): f for f in own}
    merged = [replaced.pop(str(f.get("name", "")).strip().lower(), f) for f in base.get("findings", [])]
    return {**base, **data, "findings": merged + [f for f in own if str(f["name"]).strip().lower() in replaced]}
