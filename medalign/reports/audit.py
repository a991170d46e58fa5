"""``medalign label --audit DIR``: what the labeler decided, in a form a radiologist reads in minutes.

Per finding: prevalence (reports labelled present), counts of reports present / negated / uncertain,
and a seeded random sample of sentences for each class with the words that triggered the finding
and the cue that decided its label highlighted. Written as ``audit.html`` (self-contained),
``audit.csv`` (one row per finding) and ``audit_sentences.csv`` (the sampled sentences, with the
trigger and the cue as text). ``medalign label`` labels the reports as prep does (cleaned and
redacted by :func:`redact_identifiers`), once, for both its CSV and the audit.
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

import numpy as np

from medalign.io.atomic import atomic_write_text
from medalign.reports.labeler import Mention, ReportLabeler

CLASSES = ((1, "present"), (0, "negated"), (-1, "uncertain"))


def audit_labels(mentions: dict[str, list[Mention]], labeler: ReportLabeler, out: Path, per_class: int = 10, seed: int = 0) -> dict:
    """Write the audit of reports already labelled (``{study_id: their mentions}``, as
    :meth:`ReportLabeler.mentions` gives them) into folder ``out``.
    Returns ``{finding: {"present": n, "negated": n, "uncertain": n, "prevalence": p}}``."""
    names = labeler.vocab.names
    counts = {n: {c: 0 for _, c in CLASSES} for n in names}
    examples: dict[tuple[str, int], list[tuple[str, Mention]]] = {}
    for sid, found in mentions.items():
        for m in found:
            examples.setdefault((m.finding, m.label), []).append((sid, m))
        for n, value in labeler.report_labels(found).items():
            if value is not None:
                counts[n][dict(CLASSES)[value]] += 1
    rng = np.random.default_rng(seed)
    samples: dict[tuple[str, int], list[tuple[str, Mention]]] = {}
    for key, found in examples.items():
        pick = rng.choice(len(found), size=min(per_class, len(found)), replace=False)
        samples[key] = [found[i] for i in sorted(pick)]
    n_reports = max(1, len(mentions))
    summary = {n: {**counts[n], "prevalence": counts[n]["present"] / n_reports} for n in names}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "audit.csv", _summary_csv(summary, len(mentions)))
    atomic_write_text(out / "audit_sentences.csv", _sentences_csv(samples, names))
    atomic_write_text(out / "audit.html", _html(summary, samples, names, len(mentions), labeler))
    return summary


def _summary_csv(summary: dict, n_reports: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["finding", "reports", "present", "negated", "uncertain", "prevalence"])
    for name, s in summary.items():
        w.writerow([name, n_reports, s["present"], s["negated"], s["uncertain"], f"{s['prevalence']:.4f}"])
    return buf.getvalue()


def _sentences_csv(samples: dict, names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["finding", "label", "study_id", "sentence", "trigger", "cue", "cue_kind"])
    for name in names:
        for value, _ in CLASSES:
            for sid, m in samples.get((name, value), []):
                cue = m.sentence[m.cue[0] : m.cue[1]] if m.cue else ""
                w.writerow([name, value, sid, m.sentence, m.sentence[m.trigger[0] : m.trigger[1]], cue, m.cue_kind or ""])
    return buf.getvalue()


def highlighted(m: Mention) -> str:
    """The sentence as HTML with the trigger in ``<mark class="trigger">`` and the cue in ``<mark class="cue">``."""
    spans = [(m.trigger[0], m.trigger[1], "trigger")]
    if m.cue and not (m.cue[0] < m.trigger[1] and m.trigger[0] < m.cue[1]):
        spans.append((m.cue[0], m.cue[1], "cue"))
    elif m.cue:  # a negation inside the mention ("heart is not enlarged"): the cue marked within
        spans = [(m.trigger[0], m.cue[0], "trigger"), (m.cue[0], m.cue[1], "cue"), (m.cue[1], m.trigger[1], "trigger")]
    out, pos = [], 0
    for a, b, kind in sorted(spans):
        out.append(html.escape(m.sentence[pos:a]))
        out.append(f'<mark class="{kind}">{html.escape(m.sentence[a:b])}</mark>')
        pos = b
    out.append(html.escape(m.sentence[pos:]))
    return "".join(out)


def _html(summary: dict, samples: dict, names: list[str], n_reports: int, labeler: ReportLabeler) -> str:
    rows = "".join(
        f"<tr><td><a href='#f{k}'>{html.escape(n)}</a></td><td>{summary[n]['prevalence']:.1%}</td>"
        f"<td>{summary[n]['present']}</td><td>{summary[n]['negated']}</td><td>{summary[n]['uncertain']}</td></tr>"
        for k, n in enumerate(names)
    )
    sections = []
    for k, name in enumerate(names):
        parts = [f"<h2 id='f{k}'>{html.escape(name)}</h2>"]
        for value, cname in CLASSES:
            found = samples.get((name, value), [])
            parts.append(f"<h3>{cname} <small>({summary[name][cname]} reports; {len(found)} sentences shown)</small></h3>")
            if found:
                parts.append("<ul>" + "".join(
                    f"<li><span class='sid'>{html.escape(sid)}</span> {highlighted(m)}</li>" for sid, m in found) + "</ul>")
        sections.append("".join(parts))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medalign label audit</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
mark.trigger {{ background: #ffe08a; }} mark.cue {{ background: #a8d8ff; }}
.sid {{ color: #888; font-size: 85%; margin-right: .5em; }} li {{ margin: .3em 0; }}
</style></head><body>
<h1>Finding labels: audit</h1>
<p>{n_reports} reports, {len(names)} findings. <mark class="trigger">finding</mark> the words that mention it,
<mark class="cue">cue</mark> the negation or hedge that decided its label. A report counts once per finding:
present if any sentence says so, else uncertain, else negated.</p>
<table><tr><th>finding</th><th>prevalence</th><th>present</th><th>negated</th><th>uncertain</th></tr>{rows}</table>
{''.join(sections)}
</body></html>
"""
