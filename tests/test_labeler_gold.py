"""The labeler against hand-written gold labels, scored with scikit-learn.

Both files were read while the cue lists and the chest_ct vocabulary were adjusted (the held-out
set's misses were fixed in the scope-engine round), so they guard against regressions; the figures
that measure generalisation are Open-i's test split in bench/labeler.py (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sklearn.metrics import f1_score

from medalign.reports.labeler import ReportLabeler
from medalign.reports.vocabulary import load_vocabulary

DATA = Path(__file__).parent / "data"


def _pairs(path: Path):
    vocab = load_vocabulary("chest_ct")
    labeler = ReportLabeler(vocab)
    truth, pred = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out = labeler.label(row["text"])
        for name in vocab.names:
            truth.append(row["labels"].get(name))
            pred.append(out[name])
    return truth, pred


@pytest.mark.parametrize("gold, floors", [
    ("labeler_gold.jsonl", {1: 0.95, 0: 0.95, -1: 0.95}),
    ("labeler_heldout.jsonl", {1: 0.95, 0: 0.95, -1: 0.95}),
])
def test_labeler_f1_per_class(gold, floors):
    truth, pred = _pairs(DATA / gold)
    for cls, floor in floors.items():
        f1 = f1_score([t == cls for t in truth], [p == cls for p in pred])
        assert f1 >= floor, (gold, cls, f1)
