"""Another data set's label names onto a vocabulary's findings (``configs/label_maps/<name>.yaml``).

A published data set labels its own findings (RAD-ChestCT: 84 abnormalities); the benchmarks compare
models on a shared set (CT-RATE's 18). A label map says which source label gives which finding; a
finding no source label gives stays unknown (None), never negative.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from medalign.config import from_dict, read_yaml, resolve_config_path
from medalign.errors import ConfigError
from medalign.reports.vocabulary import Vocabulary


@dataclasses.dataclass
class LabelMap:
    """``findings``: source label -> the vocabulary findings it gives (names as the vocabulary writes them)."""

    source: str
    findings: dict[str, list[str]]
    #: how a label with locations became one label (documentation; ``any_location``: present anywhere)
    aggregate: str = "any_location"

    def targets(self) -> list[str]:
        """Every finding some source label gives, in first-mention order."""
        return list(dict.fromkeys(t for targets in self.findings.values() for t in targets))

    def check(self, vocab: Vocabulary, where: str) -> None:
        """Every target must be a finding of ``vocab`` (a :class:`ConfigError` naming the first that is not)."""
        known = {n.lower() for n in vocab.names}
        for label, targets in self.findings.items():
            for t in targets:
                if t.lower() not in known:
                    raise ConfigError(f"{where}: {label} -> '{t}' is not a finding of the vocabulary ({', '.join(vocab.names)})")

    def apply(self, labels: dict[str, int], vocab: Vocabulary) -> dict[str, int | None]:
        """``{finding: 1 | 0 | None}`` in ``vocab``'s names from one study's source ``labels``
        (``{source label: 0 | 1}``); a finding no mapped label gives is None. Several labels giving one
        finding: present if any is."""
        by_lower = {n.lower(): n for n in vocab.names}
        out: dict[str, int | None] = {n: None for n in vocab.names}
        for label, targets in self.findings.items():
            if label not in labels:
                continue
            for t in targets:
                name = by_lower[t.lower()]
                out[name] = max(out[name] or 0, int(labels[label]))
        return out


def load_label_map(name_or_path: str | os.PathLike) -> LabelMap:
    """A label map by preset name (``rad_chestct``) or YAML path (strict: unknown keys are errors)."""
    path = resolve_config_path(name_or_path, "label_maps")
    data = read_yaml(path)
    mapping = from_dict(LabelMap, data, where=Path(path).name)
    for label, targets in mapping.findings.items():
        if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise ConfigError.at("findings", label, "expected a list of finding names")
    return mapping
