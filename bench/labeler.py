"""The report labeler against hand-written gold labels: precision and recall per finding and class.

Gold: ``tests/data/labeler_gold.jsonl``, one report per line with the labels a reader assigns
(1 present, 0 negated or stated normal, -1 uncertain; findings not mentioned are left out).
The reports were written by hand in the phrasing of chest-CT reports (not by medalign's phantom
report generator) and include the hard cases: pseudo-negations, "no X or Y" lists, resolution,
hedges, history. Baseline: a keyword matcher without negation or uncertainty handling (every
synonym match is "present"), run side by side.

    .venv/bin/python bench/labeler.py [--gold tests/data/labeler_gold.jsonl] [--vocab chest_ct]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

CLASSES = {1: "present", 0: "negated", -1: "uncertain"}


def load_gold(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def keyword_baseline(vocab):
    """Every synonym match means present (no negation, no uncertainty)."""
    patterns = {f.name: re.compile(r"\b(" + "|".join(re.escape(s).replace(r"\*", r"\w+") for s in f.synonyms) + r")s?\b", re.I) for f in vocab.findings}
    return lambda text: {name: (1 if p.search(text) else None) for name, p in patterns.items()}


def scores(gold: list[dict], predict, names: list[str]) -> dict:
    """Per finding and class: (tp, fp, fn); gold None and predicted None are 'not mentioned'."""
    table = {n: {c: [0, 0, 0] for c in CLASSES} for n in names}
    for row in gold:
        pred = predict(row["text"])
        for n in names:
            g, p = row["labels"].get(n), pred.get(n)
            for c in CLASSES:
                if p == c and g == c:
                    table[n][c][0] += 1
                elif p == c:
                    table[n][c][1] += 1
                elif g == c:
                    table[n][c][2] += 1
    return table


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    f = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return p, r, f


def micro(table: dict, c: int) -> tuple[float, float, float]:
    tp = sum(t[c][0] for t in table.values())
    fp = sum(t[c][1] for t in table.values())
    fn = sum(t[c][2] for t in table.values())
    return prf(tp, fp, fn)


def main() -> None:
    from medalign.prep.labeler import ReportLabeler
    from medalign.prep.vocab import load_vocabulary

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gold", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "data" / "labeler_gold.jsonl")
    p.add_argument("--vocab", default="chest_ct")
    a = p.parse_args()
    gold = load_gold(a.gold)
    vocab = load_vocabulary(a.vocab)
    names = [n for n in vocab.names if any(n in r["labels"] for r in gold)]
    ours = scores(gold, ReportLabeler(vocab).label, names)
    base = scores(gold, keyword_baseline(vocab), names)
    fmt = lambda x: "–" if x != x else f"{x:.2f}"  # noqa: E731
    print(f"{len(gold)} reports, {sum(len(r['labels']) for r in gold)} gold mentions, {len(names)} findings")
    print("| finding | gold 1/0/-1 | present P / R | negated P / R | uncertain P / R |")
    print("|---|---|---|---|---|")
    for n in names:
        counts = "/".join(str(sum(1 for r in gold if r["labels"].get(n) == c)) for c in CLASSES)
        cells = [f"{fmt(prf(*ours[n][c])[0])} / {fmt(prf(*ours[n][c])[1])}" for c in CLASSES]
        print(f"| {n} | {counts} | " + " | ".join(cells) + " |")
    for label, table in (("medalign labeler", ours), ("keyword baseline", base)):
        parts = [f"{CLASSES[c]} P {fmt(micro(table, c)[0])} R {fmt(micro(table, c)[1])} F1 {fmt(micro(table, c)[2])}" for c in CLASSES]
        print(f"micro, {label}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
