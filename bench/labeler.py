"""The report labeler on real reports, side by side with a keyword baseline and medspaCy's ConText.

1. Open-i (``--openi DIR``, default ``../shared/data/openi_reports`` beside the checkout): 3,851 real
   chest X-ray reports with NegBio's human gold labels for 14 findings. Scored per split (``dev``, the
   split the vocabulary and the cue lists were tuned on, and ``test``, never used to change anything)
   as in the issue: a finding is present when labelled 1; anything else (negated, uncertain, not
   mentioned) is not present. Macro F1 is over the findings with at least one gold positive in the
   split (NegBio's gold marks no report as ``hernia``, though 46 mention a hiatal hernia: its F1 is
   undefined and reported apart). Vocabulary: ``bench/openi_vocab.yaml`` (not a shipped preset).
   Three labelers, each on the same vocabulary:
   - medalign: concept patterns and clause-aware cue scopes (``medalign.reports.labeler``);
   - keyword baseline: any synonym match means present;
   - medspaCy ConText (``medspacy.load()``'s default rules, PyRuSH sentences) applied to *the same
     mention spans* medalign found, so the two scope engines differ and nothing else: negated -> 0,
     uncertain -> -1, hypothetical or historical -> not counted, else 1. Skipped with a line saying
     how to install it when ``medspacy`` is not importable (``make bench-nlp``).
   Also printed: on dev, how the gold treats findings medalign labels uncertain, cue by cue, and the
   macro F1 when uncertain counts as present.
2. Speed: medalign reports/s on one core over the whole Open-i set, repeated.
3. The hand-written gold (``tests/data/labeler_gold.jsonl`` and ``labeler_heldout.jsonl``, chest-CT
   phrasing, 3 classes): per-class F1 for medalign and the keyword baseline.

    .venv/bin/python bench/labeler.py [--openi DIR] [--no-medspacy] [--speed-repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {1: "present", 0: "negated", -1: "uncertain"}


def keyword_baseline(vocab):
    """Every synonym match means present (no negation, no uncertainty)."""
    patterns = {f.name: re.compile(r"\b(" + "|".join(re.escape(s).replace(r"\*", r"\w+") for s in f.synonyms) + r")s?\b", re.I)
                for f in vocab.findings if f.synonyms}
    return lambda text: {name: (1 if name in patterns and patterns[name].search(text) else None) for name in vocab.names}


class MedspacyContext:
    """medspaCy's ConText over mention spans given from outside (so only the scope engine differs)."""

    def __init__(self) -> None:
        import logging

        logging.getLogger("PyRuSH").setLevel(logging.ERROR)
        try:  # PyRuSH logs every token through loguru at DEBUG
            from loguru import logger

            logger.remove()
        except ImportError:
            pass
        import medspacy

        self.nlp = medspacy.load(enable=["medspacy_pyrush", "medspacy_context"])
        self.sentencizer = self.nlp.get_pipe("medspacy_pyrush")
        self.context = self.nlp.get_pipe("medspacy_context")

    def label(self, text: str, mentions: list[tuple[int, int, str]], names: list[str]) -> dict[str, int | None]:
        from spacy.tokens import Span
        from spacy.util import filter_spans

        doc = self.sentencizer(self.nlp.make_doc(text))
        spans = []
        for start, end, name in mentions:
            span = doc.char_span(start, end, label=name, alignment_mode="expand")
            if span is not None:
                spans.append(Span(doc, span.start, span.end, label=name))
        doc.ents = filter_spans(spans)
        doc = self.context(doc)
        found: dict[str, set[int]] = {n: set() for n in names}
        for ent in doc.ents:
            if ent._.is_hypothetical or ent._.is_historical:
                continue
            found[ent.label_].add(0 if ent._.is_negated else -1 if ent._.is_uncertain else 1)
        return {n: 1 if 1 in s else -1 if -1 in s else 0 if 0 in s else None for n, s in found.items()}


def _mention_spans(labeler, text: str) -> list[tuple[int, int, str]]:
    """medalign's mention spans as character offsets into ``text`` (the reported sections)."""
    from medalign.reports.labeler import labeler_sentences

    out, pos = [], 0
    for sentence in labeler_sentences(text):
        offset = text.find(sentence, pos)
        pos = offset + len(sentence)
        for m in labeler.sentence_mentions(sentence):
            if m.cue_kind != "negative phrase":
                out.append((offset + m.trigger[0], offset + m.trigger[1], m.finding))
    return out


def f1(gold: list[bool], pred: list[bool]) -> float:
    tp = sum(g and p for g, p in zip(gold, pred))
    fp = sum(p and not g for g, p in zip(gold, pred))
    fn = sum(g and not p for g, p in zip(gold, pred))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def openi(directory: Path, use_medspacy: bool, repeats: int) -> None:
    from medalign.reports.labeler import ReportLabeler
    from medalign.reports.report_text import clean_report, reported_text
    from medalign.reports.vocabulary import load_vocabulary

    reports = list(csv.DictReader(open(directory / "reports.csv", encoding="utf-8")))
    truth = {r["study_id"]: r for r in csv.DictReader(open(directory / "truth.csv", encoding="utf-8"))}
    vocab = load_vocabulary(ROOT / "bench" / "openi_vocab.yaml")
    names = vocab.names
    labeler = ReportLabeler(vocab)
    baseline = keyword_baseline(vocab)
    ctx = None
    if use_medspacy:
        try:
            ctx = MedspacyContext()
        except ImportError as e:
            print(f"medspaCy not importable ({e}); run `make bench-nlp` to install it beside the pinned stack")
    texts = {r["study_id"]: clean_report(r["report"]) for r in reports}
    preds = {"medalign": {}, "keyword baseline": {}, "medspaCy ConText": {}}
    seconds = {"medalign": 0.0, "keyword baseline": 0.0, "medspaCy ConText": 0.0}
    for r in reports:
        sid, text = r["study_id"], texts[r["study_id"]]
        t = time.perf_counter()
        preds["medalign"][sid] = labeler.label(text)
        seconds["medalign"] += time.perf_counter() - t
        t = time.perf_counter()
        preds["keyword baseline"][sid] = baseline(reported_text(text))
        seconds["keyword baseline"] += time.perf_counter() - t
        if ctx is not None:
            reported = reported_text(text)
            t = time.perf_counter()
            preds["medspaCy ConText"][sid] = ctx.label(reported, _mention_spans(labeler, reported), names)
            seconds["medspaCy ConText"] += time.perf_counter() - t
    systems = [s for s in preds if preds[s]]
    print(f"Open-i: {len(reports)} reports ({directory}); vocabulary bench/openi_vocab.yaml; present = 1, anything else = not present")
    for split in ("dev", "test"):
        ids = [r["study_id"] for r in reports if r["split"] == split]
        print(f"\n### {split} ({len(ids)} reports)\n")
        print("| finding | gold positives | " + " | ".join(f"{s} F1" for s in systems) + " |")
        print("|---|---|" + "---|" * len(systems))
        macro = {s: [] for s in systems}
        for n in names:
            gold = [truth[i][n] == "1" for i in ids]
            cells = []
            for s in systems:
                value = f1(gold, [preds[s][i][n] == 1 for i in ids])
                if any(gold):
                    macro[s].append(value)
                cells.append("undefined" if value != value else f"{value:.3f}")
            if not any(gold):
                cells = [f"undefined ({sum(preds[s][i][n] == 1 for i in ids)} predicted)" for s in systems]
            print(f"| {n} | {sum(gold)} | " + " | ".join(cells) + " |")
        print(f"| **macro ({len(macro[systems[0]])} findings with a gold positive)** | | "
              + " | ".join(f"**{sum(v) / len(v):.3f}**" for v in macro.values()) + " |")
    # how the gold treats hedges (dev only): reports whose only mentions of a finding are uncertain, by the deciding cue
    hedges: dict[str, list[int]] = {}
    for r in reports:
        if r["split"] != "dev":
            continue
        by_finding: dict[str, list] = {}
        for m in labeler.mentions(texts[r["study_id"]]):
            by_finding.setdefault(m.finding, []).append(m)
        for name, found in by_finding.items():
            if {m.label for m in found} != {-1}:
                continue
            for cue in {m.sentence[m.cue[0]:m.cue[1]].lower() for m in found if m.cue}:
                hedges.setdefault(cue, [0, 0])[truth[r["study_id"]][name] == "1"] += 1
    common = sorted(hedges.items(), key=lambda kv: -sum(kv[1]))[:10]
    print("\ndev, findings labelled uncertain only, by cue: gold present of all — "
          + ", ".join(f'"{cue}" {n1} of {n0 + n1}' for cue, (n0, n1) in common))
    # the same labels scored with uncertain (-1) counted as present (CheXpert's U-ones)
    for split in ("dev", "test"):
        ids = [r["study_id"] for r in reports if r["split"] == split]
        values = [f1([truth[i][n] == "1" for i in ids], [preds["medalign"][i][n] in (1, -1) for i in ids])
                  for n in names if any(truth[i][n] == "1" for i in ids)]
        print(f"\n{split}: medalign macro F1 with uncertain counted as present: {sum(values) / len(values):.3f}")
    print("\nreports/s over all splits, one core: " + ", ".join(f"{s} {len(reports) / seconds[s]:.0f}" for s in systems))
    # speed of medalign alone, repeated: what a hospital's 10^6 reports would take
    t = time.perf_counter()
    for _ in range(repeats):
        for r in reports:
            labeler.label(texts[r["study_id"]])
    rate = repeats * len(reports) / (time.perf_counter() - t)
    print(f"medalign labeler: {rate:.0f} reports/s on one core ({repeats} x {len(reports)} reports); 10^6 reports in {1e6 / rate / 60:.1f} min")


def hand_written_gold() -> None:
    from medalign.reports.labeler import ReportLabeler
    from medalign.reports.vocabulary import load_vocabulary

    vocab = load_vocabulary("chest_ct")
    labeler, baseline = ReportLabeler(vocab), keyword_baseline(vocab)
    for name in ("labeler_gold.jsonl", "labeler_heldout.jsonl"):
        rows = [json.loads(line) for line in (ROOT / "tests" / "data" / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        parts = []
        for label, predict in (("medalign", labeler.label), ("keyword baseline", baseline)):
            pred = [predict(r["text"]) for r in rows]
            cells = []
            for c, cname in CLASSES.items():
                g = [r["labels"].get(n) == c for r in rows for n in vocab.names]
                p = [q[n] == c for q in pred for n in vocab.names]
                cells.append(f"{cname} {f1(g, p):.2f}")
            parts.append(f"{label}: " + ", ".join(cells))
        print(f"hand-written gold {name} ({len(rows)} reports, chest_ct vocabulary), F1 per class — " + "; ".join(parts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--openi", type=Path, default=ROOT.parent / "shared" / "data" / "openi_reports")
    p.add_argument("--no-medspacy", action="store_true", help="skip medspaCy's ConText")
    p.add_argument("--speed-repeats", type=int, default=3)
    a = p.parse_args()
    if (a.openi / "reports.csv").is_file():
        openi(a.openi, not a.no_medspacy, a.speed_repeats)
    else:
        print(f"{a.openi}: no Open-i reports here; the real-report benchmark is skipped")
    print()
    hand_written_gold()


if __name__ == "__main__":
    main()
