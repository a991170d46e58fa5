"""The report labeler on CT-RATE's own reports against CT-RATE's released labels (issue 28).

``../shared/data/ctrate_reports`` (see its README): 1,233 real chest-CT reports of CT-RATE's validation
set with the released ``multi_abnormality_labels`` (18 findings, 0/1), split by patient into ``dev``
(tuned on) and ``test`` (reported, never tuned on). A finding counts as present when the labeler says 1;
negated, uncertain and not mentioned are absent. F1 per finding from scikit-learn, macro over the 18.

    .venv/bin/python bench/labeler_ctrate.py [--vocab chest_ct ct_rate] [--split dev test] [--show FINDING]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "ctrate_reports"


def label_all(vocab_name: str, reports: list[dict]) -> list[dict[str, int]]:
    from medalign.reports.deid import redact_identifiers
    from medalign.reports.labeler import ReportLabeler
    from medalign.reports.report_text import clean_report
    from medalign.reports.vocabulary import load_vocabulary

    labeler = ReportLabeler(load_vocabulary(vocab_name))
    return [labeler.label(redact_identifiers(clean_report(r["report"]))) for r in reports]  # the text prep stores


def main() -> None:
    from sklearn.metrics import f1_score

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--vocab", nargs="+", default=["chest_ct"])
    p.add_argument("--split", nargs="+", default=["dev", "test"])
    p.add_argument("--show", default=None, help="print the disagreements of this finding (dev only)")
    a = p.parse_args()
    reports = list(csv.DictReader(open(a.data / "reports.csv", encoding="utf-8")))
    truth = {r["study_id"]: r for r in csv.DictReader(open(a.data / "truth.csv", encoding="utf-8"))}
    names = [c for c in next(iter(truth.values())) if c != "study_id"]
    for vocab in a.vocab:
        labels = label_all(vocab, reports)
        for split in a.split:
            rows = [(r, l) for r, l in zip(reports, labels) if r["split"] == split]
            scores = {}
            for name in names:
                y = [int(truth[r["study_id"]][name]) for r, _ in rows]
                yhat = [int(l.get(name.lower()) == 1) for _, l in rows]
                scores[name] = f1_score(y, yhat, zero_division=0.0)
            macro = sum(scores.values()) / len(scores)
            print(f"{vocab} {split} ({len(rows)} reports): macro F1 {macro:.3f}")
            print("  " + ", ".join(f"{n} {s:.2f}" for n, s in sorted(scores.items(), key=lambda kv: kv[1])))
            if a.show and split == "dev":
                for r, l in rows:
                    y, yhat = int(truth[r["study_id"]][a.show]), int(l.get(a.show.lower()) == 1)
                    if y != yhat:
                        print(f"--- {r['study_id']} truth {y} labeler {l.get(a.show.lower())}")


if __name__ == "__main__":
    main()
