"""``medalign demo``: the whole pipeline on phantom data, ending with a summary table."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import time
from pathlib import Path

from typing import Callable

from medalign.prep.presets import DEMO_PRESETS
from medalign.tasks.explain_run import file_stem

DEFAULT_STUDIES = {"ct": 300, "oct": 300}
#: the finding whose relevance maps the demo draws on a test study that has it: the focal one
EXPLAINED_FINDING = {"ct": "lung nodule", "oct": "intraretinal cysts"}


def _study_to_explain(raw: Path, test_ids: list[str], finding: str) -> str:
    """The first test study the phantom drew ``finding`` in (else the first test study)."""
    with open(raw / "labels.csv", newline="", encoding="utf-8") as f:
        positive = {r["study_id"] for r in csv.DictReader(f) if r.get(finding) == "1"}
    return next((sid for sid in test_ids if sid in positive), test_ids[0])


def _pointing(why: Path, lesions: Path, finding: str) -> str:
    """The map's method, and whether its maximum lies in the lesion the phantom drew (within one voxel)."""
    import nibabel as nib

    from medalign.tasks.explain import lesion_neighbourhood

    report = json.loads((why / "explain.json").read_text())
    method = report["method"].split(" ")[0]
    mask_file = lesions / f"{file_stem(finding)}.nii.gz"
    if not mask_file.is_file():
        return f"{method} map"
    near = lesion_neighbourhood(nib.load(mask_file).get_fdata())
    hit = bool(near[tuple(report["findings"][finding]["max_voxel"])])
    return f"{method} map; its peak {'is in' if hit else 'misses'} the drawn lesion"


def _step(cli: Callable[[list[str]], int], title: str, argv: list[str], timings: dict[str, float],
          stdout_to: Path | None = None) -> None:
    print(f"\n== {title}: medalign {' '.join(argv)}{f' > {stdout_to}' if stdout_to else ''}", flush=True)
    t = time.time()
    if stdout_to is None:
        code = cli(argv)
    else:  # a long JSON answer goes to its file, not between the demo's steps
        stdout_to.parent.mkdir(parents=True, exist_ok=True)
        with open(stdout_to, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
            code = cli(argv)
    timings[title] = time.time() - t
    if code not in (0,):
        raise SystemExit(f"medalign demo: step '{title}' exited with {code}")


def run_demo(out: Path, modality: str = "ct", studies: int | None = None, max_steps: int | None = None,
             *, cli: Callable[[list[str]], int]) -> int:
    """Run synth, prep, pretrain, zeroshot, index and retrieve under ``out``; print a summary. ``cli``:
    the command line's entry point (:func:`medalign.cli.main.main`), each step one call of it."""
    out = Path(out)
    studies = studies or DEFAULT_STUDIES[modality]
    raw, data, run, zs, why, index, ret_study, ret_text, ret_eval = (
        out / n for n in ("raw", "dataset", "run", "zeroshot", "explain", "index", "retrieve_study", "retrieve_text",
                          "retrieval_eval")
    )
    for folder in (raw, data, run, zs, why, index, ret_study, ret_text, ret_eval):  # a rerun starts clean
        shutil.rmtree(folder, ignore_errors=True)
    preset = DEMO_PRESETS[modality]
    timings: dict[str, float] = {}
    t0 = time.time()
    _step(cli, "synth", ["synth", "--out", str(raw), "--modality", modality, "--studies", str(studies), "--seed", "0"], timings)
    _step(cli, "prep", ["prep", "--images", str(raw / "images"), "--reports", str(raw / "reports.csv"), "--out", str(data), "--config", preset], timings)
    pre = ["pretrain", "--data", str(data), "--out", str(run), "--config", preset]
    if max_steps:
        pre += ["--max-steps", str(max_steps)]
    _step(cli, "pretrain", pre, timings)
    _step(cli, "zeroshot", ["zeroshot", "--checkpoint", str(run), "--data", str(data), "--labels", str(raw / "labels.csv"), "--split", "test", "--out", str(zs)], timings)
    _step(cli, "index", ["index", "--checkpoint", str(run), "--data", str(data), "--out", str(index)], timings)
    with open(zs / "scores.csv", newline="") as f:
        test_ids = [r["study_id"] for r in csv.DictReader(f)]
    finding = EXPLAINED_FINDING[modality]
    explained = _study_to_explain(raw, test_ids, finding)
    _step(cli, "explain", ["zeroshot", "--checkpoint", str(run), "--study", str(raw / "images" / explained), "--explain", str(why)],
          timings, stdout_to=why / "command_output.txt")
    query_study = raw / "images" / test_ids[0]
    _step(cli, "retrieve (study)", ["retrieve", "--index", str(index), "--study", str(query_study), "--k", "5", "--out", str(ret_study)], timings)
    query_text = "pleural effusion" if modality == "ct" else "subretinal fluid"
    _step(cli, "retrieve (text)", ["retrieve", "--index", str(index), "--text", query_text, "--k", "5", "--out", str(ret_text)], timings)
    _step(cli, "retrieval-eval", ["retrieval-eval", "--index", str(index), "--data", str(data), "--labels", str(raw / "labels.csv"), "--split", "test", "--out", str(ret_eval)], timings)
    metrics = json.loads((zs / "metrics.json").read_text())
    reval = json.loads((ret_eval / "metrics.json").read_text())
    recall, s2s = reval["report_to_study"], reval["study_to_study"]
    rows = [
        ("phantom DICOM + reports", raw, f"{studies} studies"),
        ("dataset (manifest.parquet)", data, f"{timings['prep']:.0f} s"),
        ("exported model", run / "model", f"{timings['pretrain']:.0f} s"),
        ("its model card", run / "model" / "MODEL_CARD.md", "use, data, validation CIs, thresholds, limits"),
        ("zero-shot metrics + ROC", zs / "metrics.json", f"macro AUROC {metrics['macro_auroc']:.3f}"),
        ("retrieval index + metrics", ret_eval / "metrics.json", f"study->study mAP@10 {s2s['map@10']:.2f} (chance {s2s['chance_map@10']:.2f})"),
        (f"why: {finding}, {explained}", why / f"{file_stem(finding)}.png", _pointing(why, raw / "lesions" / explained, finding)),
        ("similar cases (study)", ret_study / "montage.png", ""),
        ("similar cases (text)", ret_text / "montage.png", f"report->study R@5 {recall['recall@5']:.2f} (chance {recall['chance@5']:.2f})"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n== medalign demo ({modality.upper()}) finished in {time.time() - t0:.0f} s")
    for name, path, note in rows:
        print(f"  {name:<{width}}  {str(path):<45} {note}")
    for name, v in metrics["per_finding"].items():
        if v["auroc"] is not None:
            print(f"  zero-shot AUROC {name:<22} {v['auroc']:.3f}  ({v['n_positive']}/{v['n']} positive)")
    token = out / "serve_token"
    print("\nserve the demo model (page and API on http://127.0.0.1:8000/; docs/serve.md):")
    print(f"  (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > {token})")
    print(f"  medalign serve --checkpoint {run} --index {index} --token-file {token}")
    return 0
