"""``medalign label``: a reports file into a finding-label table (1 / 0 / -1 / empty per finding),
labelled on the text prep would store (cleaned, identifiers redacted), and optionally an audit."""

from __future__ import annotations

import csv
from pathlib import Path

from medalign.io.atomic import atomic_write
from medalign.io.reports import read_reports
from medalign.reports.deid import redact_identifiers
from medalign.reports.labeler import ReportLabeler
from medalign.reports.report_text import clean_report
from medalign.reports.vocabulary import Vocabulary


def label_reports(reports: Path, out: Path, vocab: Vocabulary, columns: dict[str, str] | None = None, audit: Path | None = None,
                  audit_samples: int = 10) -> tuple[int, list[str]]:
    """Write ``out`` (CSV: the reports' key column, then one column per finding), atomically; with
    ``audit`` also the audit pages (:func:`~medalign.reports.audit.audit_labels`). Returns the number
    of reports labelled and the reading problems to warn about."""
    rows_in, problems, key_column = read_reports(reports, columns)
    labeler = ReportLabeler(vocab)
    # one labelling pass for the CSV and the audit
    kept: dict[str, list] = {}
    rows = []
    for sid, row in rows_in.items():
        found = labeler.mentions(redact_identifiers(clean_report(row["report"])))
        labels = labeler.report_labels(found)
        rows.append([sid, *("" if labels[n] is None else labels[n] for n in vocab.names)])
        if audit is not None:
            kept[sid] = found

    def _write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([key_column, *vocab.names])
            w.writerows(rows)

    atomic_write(Path(out), _write)
    if audit is not None:
        from medalign.reports.audit import audit_labels

        audit_labels(kept, labeler, audit, per_class=audit_samples)
    return len(rows_in), problems
