"""Zero-shot diagnosis: score each finding from a positive/negative prompt pair (CT-CLIP style)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_write, atomic_write_json
from medalign.metrics import binary_labels, bootstrap_auroc_ci
from medalign.models.inference import finding_probabilities  # noqa: F401 - part of this module's API


#: the id columns a labels file may have, as ``medalign label``, a RIS export and CT-RATE write them
LABEL_ID_COLUMNS = ("study_id", "accession_number", "VolumeName")


def read_label_csv(path: Path, study_ids: list[str], findings: list[str], id_key: bytes | None = None) -> np.ndarray:
    """``(N, K)`` 0/1 labels for ``study_ids`` from a labels file: an id column (``study_id``,
    ``accession_number`` as ``medalign label`` writes for an accession-keyed export, or CT-RATE's
    ``VolumeName``, which also names its CT-RATE scan) + one column per finding (case, spaces and
    underscores do not matter); missing values NaN. ``id_key`` (``--hash-ids``): the
    file's ids are pseudonymised as ``prep --hash-ids`` did the dataset's. A file that names none of
    the studies is an :class:`InputError` with the counts; one that names some says how many on stderr."""
    import sys

    from medalign.reports.given_labels import row_study_ids
    from medalign.io.tables import read_table

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labels file not found")
    header, table = read_table(path)
    column = next((c for c in LABEL_ID_COLUMNS if c in header), None)
    if column is None:
        raise InputError(f"{path}: needs an id column ({', '.join(LABEL_ID_COLUMNS)}); found: {', '.join(header)}")
    rows, aliases = {}, {}
    for r in table:
        keys = row_study_ids(r.get(column) or "", column)
        if keys[0]:
            keys = [_pseudonym(k, id_key) if id_key else k for k in keys]
            rows[keys[0]] = r
            for alias in keys[1:]:  # a CT-RATE scan (prep --layout ct-rate): its first reconstruction's labels
                aliases.setdefault(alias, r)
    rows = {**aliases, **rows}
    found = sum(sid in rows for sid in study_ids)
    if study_ids and not found:
        hint = ("; the dataset's ids are keyed pseudonyms: pass the --hash-ids KEYFILE it was prepared with"
                if id_key is None and all(_looks_pseudonymous(s) for s in study_ids) else "")
        raise InputError(f"{path}: none of its {len(rows)} {column} values names one of the {len(study_ids)} studies "
                         f"(e.g. file {next(iter(rows), '-')!r}, dataset {study_ids[0]!r}){hint}")
    if found < len(study_ids):
        print(f"note: {path}: labels for {found} of {len(study_ids)} studies; the others are left out of each finding's figures",
              file=sys.stderr)
    # the file's column for each finding: case, spaces and underscores do not matter ("Pleural effusion", CT-RATE's)
    by_key = {" ".join(h.replace("_", " ").lower().split()): h for h in header}
    columns = [by_key.get(" ".join(name.replace("_", " ").lower().split())) for name in findings]
    out = np.full((len(study_ids), len(findings)), np.nan, dtype=np.float32)
    for i, sid in enumerate(study_ids):
        row = rows.get(sid)
        for k, column_of in enumerate(columns):
            if row is not None and column_of is not None and row.get(column_of, "") not in ("", None):
                try:
                    out[i, k] = float(row[column_of])
                except ValueError:
                    raise InputError(f"{path}: study {sid}, column '{column_of}': not a number ({row[column_of]!r})") from None
    return out


def _pseudonym(study_id: str, key: bytes) -> str:
    from medalign.prep.pseudonyms import pseudonym

    return pseudonym(study_id, key)


def _looks_pseudonymous(study_id: str) -> bool:
    """``s`` + 20 hex digits: an id ``prep --hash-ids`` wrote."""
    return len(study_id) == 21 and study_id[0] == "s" and all(c in "0123456789abcdef" for c in study_id[1:])


def threshold_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, precision and F1 when ``s >= threshold`` is called positive."""
    pred = s >= threshold
    tp, fp = int(np.sum(pred & (y == 1))), int(np.sum(pred & (y == 0)))
    fn, tn = int(np.sum(~pred & (y == 1))), int(np.sum(~pred & (y == 0)))
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    prec = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"threshold": float(threshold), "sensitivity": sens, "specificity": spec, "precision": prec, "f1": f1}


def evaluate(
    scores: np.ndarray,
    truth: np.ndarray,
    findings: list[str],
    thresholds: dict[str, float] | None = None,
    n_bootstrap: int = 1000,
    threshold_notes: dict[str, str] | None = None,
) -> dict:
    """Per-finding AUROC (with bootstrap 95% CI), average precision, and, at the given thresholds
    (chosen elsewhere, on a validation split), sensitivity/specificity/precision/F1; macro means
    over findings with both classes. A finding without a threshold gets none fitted here (that
    would fit on the split being scored): its threshold metrics are null and
    ``threshold_notes[name]`` says why.

    ``truth``: 1 positive, 0 negative, NaN or -1 (uncertain) excluded for that finding.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    per = {}
    for k, name in enumerate(findings):
        yk, sk = binary_labels(truth[:, k], scores[:, k])
        n_pos = int(yk.sum())
        entry = {"n": int(len(yk)), "n_positive": n_pos}
        if 0 < n_pos < len(yk):
            entry["auroc"] = float(roc_auc_score(yk, sk))
            entry["auroc_ci95"] = list(bootstrap_auroc_ci(yk, sk, n_bootstrap, seed=k))
            entry["average_precision"] = float(average_precision_score(yk, sk))
            thr = (thresholds or {}).get(name)
            if thr is not None:
                entry.update(threshold_metrics(yk, sk, thr))
            else:
                entry.update({"threshold": None, "sensitivity": None, "specificity": None, "precision": None, "f1": None,
                              "threshold_note": (threshold_notes or {}).get(name, "no validation threshold")})
        else:
            entry["auroc"] = None
        per[name] = entry
    evaluated = [v for v in per.values() if v["auroc"] is not None]

    def macro(key: str) -> float:
        vals = [v[key] for v in evaluated if v.get(key) is not None and not math.isnan(v[key])]
        return float(np.mean(vals)) if vals else math.nan

    return {
        "macro_auroc": macro("auroc"),
        "macro_average_precision": macro("average_precision"),
        "macro_sensitivity": macro("sensitivity"),
        "macro_specificity": macro("specificity"),
        "macro_f1": macro("f1"),
        "n_findings_evaluated": len(evaluated),
        "per_finding": per,
    }


def plot_roc(scores: np.ndarray, truth: np.ndarray, findings: list[str], metrics: dict, path: Path) -> None:
    """ROC curve per evaluated finding in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6, 6))
    for k, name in enumerate(findings):
        if metrics["per_finding"][name]["auroc"] is None:
            continue
        y = truth[:, k]
        keep = np.isfinite(y) & (y >= 0)
        fpr, tpr, _ = roc_curve((y[keep] > 0.5).astype(int), scores[keep, k])
        ax.plot(fpr, tpr, label=f"{name} ({metrics['per_finding'][name]['auroc']:.2f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"Zero-shot ROC (macro AUROC {metrics['macro_auroc']:.3f})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_scores_csv(path: Path, study_ids: list[str], scores: np.ndarray, findings: list[str]) -> None:
    """Per-study probabilities, one column per finding."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["study_id", *findings])
            for sid, row in zip(study_ids, scores):
                w.writerow([sid, *(f"{v:.9g}" for v in row)])  # float32 round-trips exactly

    atomic_write(path, _write)


def write_metrics(path: Path, metrics: dict) -> None:
    """``metrics.json``, atomically."""
    atomic_write_json(path, metrics)
