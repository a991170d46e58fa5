"""The loss registry, in timm's manner: each loss module registers its class with what it needs
from the batch and the model; training asks the registry and never branches on a loss's name.

A new loss is one module (a :class:`~medalign.losses.base.ContrastiveLoss` subclass under
:func:`register_loss`) plus its name in ``BUILTIN_LOSSES``, and a float64 test of its formula.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Literal

#: modules holding medalign's own losses (each registers at import)
BUILTIN_LOSSES = ("medalign.losses.clip", "medalign.losses.sigmoid", "medalign.losses.soft_labels", "medalign.losses.cwcl")

#: when a loss uses the frozen text tower's report embeddings: never, always, or with ``loss.with_similarity``
ReportEmbeddings = Literal["never", "always", "with_similarity"]


@dataclasses.dataclass(frozen=True)
class LossEntry:
    """A registered loss and what it needs."""

    name: str
    cls: type
    description: str
    #: reads the batch's finding labels
    needs_labels: bool = False
    #: needs the model's learnable logit bias (SigLIP): the model is built with one
    needs_bias: bool = False
    report_embeddings: ReportEmbeddings = "never"
    #: takes ``loss.mix`` (the weight of the soft targets against the identity)
    uses_mix: bool = False

    def uses_report_embeddings(self, with_similarity: bool) -> bool:
        """Whether training must embed the reports with the frozen pretrained text tower."""
        return self.report_embeddings == "always" or (self.report_embeddings == "with_similarity" and with_similarity)

    def create(self, mix: float = 0.5, local_loss: bool = False, gather_with_grad: bool = True):
        """The loss module, ``mix`` passed only to a loss that takes it."""
        options = {"local_loss": local_loss, "gather_with_grad": gather_with_grad}
        return self.cls(mix=mix, **options) if self.uses_mix else self.cls(**options)


_LOSSES: dict[str, LossEntry] = {}
_loaded = False


def register_loss(name: str, *, description: str, needs_labels: bool = False, needs_bias: bool = False,
                  report_embeddings: ReportEmbeddings = "never", uses_mix: bool = False) -> Callable[[type], type]:
    """Class decorator registering a :class:`~medalign.losses.base.ContrastiveLoss` as ``name``."""

    def decorate(cls: type) -> type:
        _LOSSES[name] = LossEntry(name, cls, description, needs_labels, needs_bias, report_embeddings, uses_mix)
        return cls

    return decorate


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_LOSSES:
            importlib.import_module(module)


def list_losses() -> list[str]:
    """Registered loss names, sorted (what ``loss.name`` accepts)."""
    _load()
    return sorted(_LOSSES)


def loss_entry(name: str) -> LossEntry:
    """The registered loss ``name``; an unknown name is a ``KeyError`` naming the registered ones."""
    _load()
    if name not in _LOSSES:
        raise KeyError(f"'{name}' is not one of {', '.join(_LOSSES)}")
    return _LOSSES[name]


def create_loss(name: str, mix: float = 0.5, local_loss: bool = False, gather_with_grad: bool = True):
    """The loss module registered as ``name`` (``mix`` for the losses that take it)."""
    return loss_entry(name).create(mix, local_loss, gather_with_grad)
