"""Finding vocabularies: names, synonyms, negative phrases and zero-shot prompts (YAML)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from medalign.config import from_dict, read_yaml, resolve_config_path
from medalign.errors import ConfigError


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
                raise ConfigError(f"{where}.{side}: needs a non-empty prompt or list of prompts")

    @property
    def positives(self) -> list[str]:
        """The positive prompts as a list."""
        return [self.positive] if isinstance(self.positive, str) else list(self.positive)

    @property
    def negatives(self) -> list[str]:
        """The negative prompts as a list."""
        return [self.negative] if isinstance(self.negative, str) else list(self.negative)


@dataclasses.dataclass
class Finding:
    """One finding: its canonical name, the phrases that mention it, and its prompts."""

    name: str
    synonyms: list[str] = dataclasses.field(default_factory=list)
    negative_phrases: list[str] = dataclasses.field(default_factory=list)
    prompts: PromptPair | None = None

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
            raise ConfigError(f"{where}: vocabulary has no findings")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{where}: duplicate finding '{dup[0]}'")
        for f in self.findings:
            if not f.synonyms:
                f.synonyms = [f.name]

    @property
    def names(self) -> list[str]:
        """Finding names in order."""
        return [f.name for f in self.findings]


def load_vocabulary(name_or_path: str | os.PathLike) -> Vocabulary:
    """Load a vocabulary YAML file or preset name under ``configs/vocab/`` (strict)."""
    path = resolve_config_path(name_or_path, "vocab")
    return from_dict(Vocabulary, read_yaml(path), where=Path(path).name)
