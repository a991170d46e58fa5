"""Published evaluation protocols, reproduced so that medalign's numbers stand beside the papers'
(``zeroshot --protocol ct-clip``). Each protocol says how it prompts, how it turns scores into calls,
and what it reports; medalign's own protocol (thresholds from the validation split, bootstrap CIs) is
reported beside it, never replaced by it.

CT-CLIP (Hamamci et al. 2024; read from its ``scripts/zero_shot.py``, ``scripts/eval.py`` and
``scripts/bootstrap_values.py``): for each of CT-RATE's 18 findings the prompts ``"<Finding>."`` and
``"not <Finding>."``, the score the softmax over the two; AUROC per finding (scikit-learn's
``roc_curve`` and ``auc``); a threshold per finding chosen *on the evaluated set itself* from 100 evenly
spaced values in [0, 1], the one whose (FPR, TPR) lies closest to (0, 1) (a later one wins a tie), a
call being ``score > threshold``; then weighted F1, accuracy and precision of those calls. Their
"bootstrap" loop draws no resamples (the line is commented out), so the figures are point estimates.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from medalign.reports.vocabulary import PromptPair, Vocabulary

#: published zero-shot macro AUROC on CT-RATE's validation set (18 findings), as their papers give them
PUBLISHED_CT_RATE = {
    "CT-CLIP (Hamamci et al. 2024)": 0.731,
    "fVLM (Shui et al. 2025)": 0.778,
    "MedVista3D (2025)": 0.782,
    "MPS-CT (2025)": 0.838,
    "RadFinder (2025)": 0.838,
}


#: published zero-shot macro AUROC on RAD-ChestCT (14 rows: CT-RATE's findings the fVLM/HLIP label map
#: covers, the two calcifications merged into one), from the authors' released result files
PUBLISHED_RAD_CHESTCT = {
    "HLIP ViT-B (Zhao et al. 2025; src/hlip_test/results/rad_chestct/.../results_volume.json)": 0.723,
}
#: the two findings fVLM's and HLIP's RAD-ChestCT tables merge into one "calcification" row
CALCIFICATIONS = ("coronary artery wall calcification", "arterial wall calcification")


def merged_calcification(coronary: np.ndarray, arterial: np.ndarray) -> np.ndarray:
    """fVLM/HLIP's one calcification score from the two CT-RATE findings' ``(N,)`` scores: the larger
    when either exceeds 0.5, else the smaller (``compute_radchestct_metrics`` in HLIP's zero-shot script)."""
    return np.where((coronary > 0.5) | (arterial > 0.5), np.maximum(coronary, arterial), np.minimum(coronary, arterial))


def rad_chestct_rows(scores: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """RAD-ChestCT's evaluation rows as fVLM and HLIP tabulate them: every scored finding but the two
    calcifications, then one ``calcification`` row (:func:`merged_calcification`; truth RAD-ChestCT's
    one calcification label, which the label map gives both). ``scores``, ``truth`` ``(N, K)``."""
    keep = [k for k, n in enumerate(names) if n not in CALCIFICATIONS]
    s, t, out_names = scores[:, keep], truth[:, keep], [names[k] for k in keep]
    if all(c in names for c in CALCIFICATIONS):
        c, a = names.index(CALCIFICATIONS[0]), names.index(CALCIFICATIONS[1])
        s = np.concatenate([s, merged_calcification(scores[:, c], scores[:, a])[:, None]], axis=1)
        t = np.concatenate([t, truth[:, c:c + 1]], axis=1)
        out_names.append("calcification")
    return s, t, out_names


def ct_clip_vocabulary(vocab: Vocabulary) -> Vocabulary:
    """``vocab`` with CT-CLIP's prompt pair for every finding: ``"<Finding>."`` / ``"not <Finding>."``
    (the name with its first letter in capitals, as CT-RATE writes its labels)."""
    findings = []
    for f in vocab.findings:
        name = f.name[:1].upper() + f.name[1:]
        findings.append(dataclasses.replace(f, prompts=PromptPair(positive=f"{name}.", negative=f"not {name}.")))
    return Vocabulary(findings=findings)


def ct_clip_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """CT-CLIP's operating point for one finding: of ``linspace(0, 1, 100)``, the threshold whose
    calls (``score > t``) put (FPR, TPR) closest to (0, 1); on a tie the later. ``scores``, ``truth`` ``(N,)``."""
    positives, negatives = truth == 1, truth == 0
    best, best_distance = 0.0, math.inf
    for t in np.linspace(0, 1, 100):
        called = scores > t
        tpr = np.sum(called & positives) / np.sum(positives)
        fpr = np.sum(called & negatives) / np.sum(negatives)
        distance = math.sqrt((1 - tpr) ** 2 + fpr**2)
        if distance <= best_distance:
            best, best_distance = float(t), distance
    return best


def ct_clip_metrics(scores: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    """CT-CLIP's figures for ``scores`` and 0/1 ``truth`` ``(N, K)``: per finding AUROC, threshold,
    weighted F1, accuracy and precision, and their means over the findings that have both classes
    (a finding with one class has no AUROC; CT-CLIP's code would stop there)."""
    from sklearn.metrics import accuracy_score, auc, f1_score, precision_score, roc_curve

    per: dict[str, dict] = {}
    for k, name in enumerate(names):
        y, s = truth[:, k], scores[:, k]
        known = np.isin(y, (0, 1))
        y, s = y[known].astype(int), s[known]
        if len(np.unique(y)) < 2:
            per[name] = {"auroc": None, "skipped": "one class only" if len(y) else "no labels (unknown in every study)"}
            continue
        fpr, tpr, _ = roc_curve(y, s)
        t = ct_clip_threshold(s, y)
        called = (s > t).astype(int)
        per[name] = {"auroc": float(auc(fpr, tpr)), "threshold": t, "f1_weighted": float(f1_score(y, called, average="weighted")),
                     "accuracy": float(accuracy_score(y, called)), "precision": float(precision_score(y, called, zero_division=0.0))}
    scored = [v for v in per.values() if v["auroc"] is not None]
    means = {m: float(np.mean([v[m] for v in scored])) if scored else None for m in ("auroc", "f1_weighted", "accuracy", "precision")}
    return {"protocol": "ct-clip", "per_finding": per, "macro": means, "findings_scored": len(scored),
            "threshold_rule": "per finding, on the evaluated set: of linspace(0, 1, 100) the one closest to (FPR 0, TPR 1); call = score > t",
            "prompts": "'<Finding>.' / 'not <Finding>.', softmax over the pair",
            "published_macro_auroc_ct_rate_valid": PUBLISHED_CT_RATE}


def rad_chestct_metrics(scores: np.ndarray, truth: np.ndarray, names: list[str]) -> dict:
    """:func:`ct_clip_metrics` on RAD-ChestCT's rows (:func:`rad_chestct_rows`; findings with no known
    label, such as lymphadenopathy, drop out as one-class), with the published RAD-ChestCT figures beside."""
    s, t, rows = rad_chestct_rows(scores, truth, names)
    out = ct_clip_metrics(s, t, rows)
    out.pop("published_macro_auroc_ct_rate_valid")
    out["benchmark"] = "rad-chestct: the two calcifications merged as fVLM and HLIP merge them"
    out["published_macro_auroc_rad_chestct"] = PUBLISHED_RAD_CHESTCT
    return out


def ct_clip_report_to_volume_recall(reports: np.ndarray, volumes: np.ndarray, ks: tuple[int, ...] = (5, 10, 50, 100)) -> dict:
    """CT-CLIP's report -> volume recall (``scripts/report_to_volume.py``): report ``i`` ``(N, D)``
    scores every volume ``(N, D)`` by the dot product; a hit when volume ``i`` is among the ``K``
    highest (equal scores in index order, as Python's stable sort leaves them). ``{K: recall}``, None
    for a ``K`` above the number of volumes."""
    scores = np.asarray(reports, np.float64) @ np.asarray(volumes, np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")
    rank = np.argmax(order == np.arange(len(scores))[:, None], axis=1)  # where each report's own volume falls
    return {k: (float(np.mean(rank < k)) if k <= scores.shape[1] else None) for k in ks}


def _positive_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """CT-CLIP's label similarity of two 0/1 rows: findings both have / findings exactly one has or both have."""
    both = np.sum((a == 1) & (b == 1))
    either = np.sum(a != b)
    return float(both / (both + either)) if both + either else 0.0


def ct_clip_volume_to_volume(volumes: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5, 10, 50)) -> dict:
    """CT-CLIP's volume -> volume score (``ct_clip/scripts/volume_to_volume.py``; "MAP@K" in its
    paper): every volume queries the volumes with at least one positive finding (itself included when
    it has one) by cosine similarity; the score of a query is the mean label similarity
    (:func:`_positive_overlap`) of its top ``K``; the mean over queries. Their code keeps one list of
    query scores across the ``K`` it loops over (never emptied), so each figure it prints is the mean
    over that ``K`` and every smaller one: ``as_their_code_prints`` gives those, ``per_k`` each ``K``
    on its own. ``volumes`` ``(N, D)``, ``labels`` ``(N, K)`` 0/1."""
    v = np.asarray(volumes, np.float64)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    labels = np.asarray(labels)
    candidates = np.flatnonzero(labels.sum(axis=1) > 0)
    sims = v @ v[candidates].T
    order = np.argsort(-sims, axis=1, kind="stable")
    per_k, running, collected = {}, {}, []
    for k in ks:
        if k > len(candidates):
            per_k[k] = running[k] = None
            continue
        scores = [float(np.mean([_positive_overlap(labels[i], labels[candidates[j]]) for j in order[i, :k]])) for i in range(len(v))]
        collected += scores
        per_k[k], running[k] = float(np.mean(scores)), float(np.mean(collected))
    return {"per_k": per_k, "as_their_code_prints": running, "candidates": int(len(candidates))}
