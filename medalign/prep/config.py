"""The preparation configuration (``configs/prep/*.yaml``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from medalign.errors import ConfigError
from medalign.io.volume import SeriesSelection
from medalign.prep.steps import list_steps


@dataclasses.dataclass
class PrepConfig:
    """How raw studies become cached training volumes."""

    modality: Literal["ct", "oct"] = "ct"
    #: vocabulary preset or path used when ``--vocab`` is not given
    vocab: str = "chest_ct"
    series: SeriesSelection = dataclasses.field(default_factory=SeriesSelection)
    #: registered steps (:mod:`medalign.prep.steps`, MONAI dictionary transforms) in order: ``[{name: {options}}]``
    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: dtype of cached volumes (values are in [0, 1] after windowing)
    #: uint8 stores the [0, 1] window in 256 levels (half float16's bytes, ~10x faster to read; bench/cache_format.py)
    cache_dtype: Literal["uint8", "float16", "float32"] = "uint8"
    workers: int = 2
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    #: OCT: left eyes (OS) mirrored along the lateral axis, so the nasal side always lies on one side
    mirror_left_eyes: bool = False
    #: the report sections a layout with sectioned reports takes (``--layout ct-rate``: clinical_information,
    #: technique, findings, impression), in order
    report_sections: list[str] = dataclasses.field(default_factory=lambda: ["findings", "impression"])

    def validate(self, where: str) -> None:
        if not self.steps:
            raise ConfigError.at(where, "steps", "is empty")
        if self.workers < 1:
            raise ConfigError.at(where, "workers", "must be >= 1")
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise ConfigError.at(where, "test_fraction", "val_fraction + test_fraction must lie in [0, 1)")
        for i, step in enumerate(self.steps):
            if not isinstance(step, dict) or len(step) != 1 or next(iter(step)) not in list_steps():
                raise ConfigError.at(where, f"steps[{i}]", f"expected one of {', '.join(list_steps())} as {{name: {{options}}}}, got {step!r}")
