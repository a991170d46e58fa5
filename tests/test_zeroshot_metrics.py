"""Zero-shot metrics against scikit-learn and brute force, on generated scores with known structure."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from medalign.metrics import bootstrap_auroc_ci, youden_threshold
from medalign.tasks.zeroshot import evaluate, threshold_metrics


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    s = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.2, n), 0, 1)
    return y, s


def test_threshold_metrics_match_sklearn():
    y, s = _data()
    for thr in (0.3, 0.5, 0.62):
        m = threshold_metrics(y, s, thr)
        tn, fp, fn, tp = confusion_matrix(y, (s >= thr).astype(int)).ravel()
        assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["f1"] == pytest.approx(f1_score(y, (s >= thr).astype(int)))


def test_youden_threshold_is_the_brute_force_optimum():
    y, s = _data(seed=1)
    best = max(np.unique(s), key=lambda t: threshold_metrics(y, s, t)["sensitivity"] + threshold_metrics(y, s, t)["specificity"])
    j = lambda t: threshold_metrics(y, s, t)["sensitivity"] + threshold_metrics(y, s, t)["specificity"]  # noqa: E731
    assert j(youden_threshold(y, s)) == pytest.approx(j(best))


def test_bootstrap_interval_brackets_the_auroc():
    y, s = _data(seed=2)
    lo, hi = bootstrap_auroc_ci(y, s, n=300)
    assert 0 <= lo <= roc_auc_score(y, s) <= hi <= 1
    assert hi - lo < 0.2


def test_bootstrap_interval_equals_scikit_learn_on_the_same_resamples():
    """The vectorised rank statistic gives what roc_auc_score gives on each resample, ties included."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 30)
    s = np.round(rng.normal(size=30) + y, 1)  # rounded: many tied scores
    idx = np.random.default_rng(9).integers(0, 30, (400, 30))
    reference = [roc_auc_score(y[i], s[i]) for i in idx if 0 < y[i].sum() < 30]
    assert bootstrap_auroc_ci(y, s, n=400, seed=9) == pytest.approx(tuple(np.percentile(reference, [2.5, 97.5])), abs=1e-12)


def test_evaluate_skips_one_class_and_uncertain():
    y, s = _data(n=50, seed=3)
    truth = np.stack([y, np.zeros(50), np.where(np.arange(50) < 10, -1, y)], axis=1).astype(float)
    scores = np.stack([s, s, s], axis=1)
    m = evaluate(scores, truth, ["a", "b", "c"], n_bootstrap=50)
    assert m["per_finding"]["b"]["auroc"] is None
    assert m["per_finding"]["c"]["n"] == 40  # uncertain rows left out
    assert m["per_finding"]["a"]["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["per_finding"]["c"]["auroc"] == pytest.approx(roc_auc_score(y[10:], s[10:]))
    assert m["n_findings_evaluated"] == 2
    assert m["macro_auroc"] == pytest.approx(np.mean([m["per_finding"][k]["auroc"] for k in ("a", "c")]))


def test_ct_clip_protocol_figures_equal_an_independent_computation():
    """CT-CLIP's protocol (medalign.tasks.protocols) on one score matrix against scikit-learn and a
    float64 brute-force re-derivation of its threshold rule, to 1e-6."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, roc_auc_score

    from medalign.tasks.protocols import ct_clip_metrics

    rng = np.random.default_rng(11)
    n, k = 120, 4
    truth = (rng.random((n, k)) < [0.2, 0.4, 0.5, 0.1]).astype(float)
    scores = np.clip(0.35 * truth + rng.random((n, k)) * 0.75, 0, 1)
    truth[:, 3] = 0  # one finding with one class: no figures
    got = ct_clip_metrics(scores, truth, ["a", "b", "c", "d"])
    assert got["per_finding"]["d"]["auroc"] is None and got["findings_scored"] == 3
    for j, name in enumerate("abc"):
        y, s = truth[:, j].astype(int), scores[:, j].astype(np.float64)
        grid = np.linspace(0, 1, 100)
        distances = [np.hypot(1 - np.mean(s[y == 1] > t), np.mean(s[y == 0] > t)) for t in grid]
        t = grid[len(grid) - 1 - int(np.argmin(distances[::-1]))]  # the later of equally close thresholds
        called = (s > t).astype(int)
        mine = got["per_finding"][name]
        assert mine["threshold"] == pytest.approx(t, abs=1e-12)
        assert mine["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)
        assert mine["f1_weighted"] == pytest.approx(f1_score(y, called, average="weighted"), abs=1e-6)
        assert mine["accuracy"] == pytest.approx(accuracy_score(y, called), abs=1e-6)
        assert mine["precision"] == pytest.approx(precision_score(y, called), abs=1e-6)
    assert got["macro"]["auroc"] == pytest.approx(np.mean([roc_auc_score(truth[:, j], scores[:, j]) for j in range(3)]), abs=1e-6)


def test_rad_chestct_rows_merge_the_calcifications_as_hlip_scores_them():
    """RAD-ChestCT's table (fVLM/HLIP): both calcifications give one row, scored by the larger of the
    two when either exceeds 0.5 and the smaller otherwise; a finding without labels drops out. Checked
    against a per-study loop of that rule and scikit-learn's AUROC."""
    from medalign.tasks.protocols import rad_chestct_metrics

    rng = np.random.default_rng(5)
    n = 150
    names = ["pleural effusion", "coronary artery wall calcification", "arterial wall calcification", "lymphadenopathy"]
    calc = (rng.random(n) < 0.45).astype(float)
    effusion = (rng.random(n) < 0.3).astype(float)
    truth = np.stack([effusion, calc, calc, np.full(n, np.nan)], axis=1)
    scores = np.clip(np.stack([0.3 * effusion, 0.25 * calc, 0.2 * calc, np.zeros(n)], axis=1) + rng.random((n, 4)) * 0.7, 0, 1)
    got = rad_chestct_metrics(scores, truth, names)
    merged = []
    for c, a in scores[:, 1:3]:
        merged.append(max(c, a) if (c > 0.5 or a > 0.5) else min(c, a))
    assert set(got["per_finding"]) == {"pleural effusion", "lymphadenopathy", "calcification"}
    assert got["per_finding"]["lymphadenopathy"]["auroc"] is None
    assert got["per_finding"]["calcification"]["auroc"] == pytest.approx(roc_auc_score(calc, merged), abs=1e-9)
    assert got["macro"]["auroc"] == pytest.approx((roc_auc_score(effusion, scores[:, 0]) + roc_auc_score(calc, merged)) / 2, abs=1e-9)
    assert "published_macro_auroc_rad_chestct" in got and "published_macro_auroc_ct_rate_valid" not in got


def test_ct_clip_prompts():
    from medalign.reports.vocabulary import load_vocabulary
    from medalign.tasks.protocols import ct_clip_vocabulary

    pairs = {f.name: f.prompt_pair() for f in ct_clip_vocabulary(load_vocabulary("ct_rate")).findings}
    assert (pairs["lung nodule"].positive, pairs["lung nodule"].negative) == ("Lung nodule.", "not Lung nodule.")


def test_ct_clip_retrieval_figures_equal_a_loop_written_from_their_scripts():
    """Report -> volume recall and volume -> volume score against plain float64 loops of the rules
    (a hit when the own volume is in the top K; the mean label overlap of the top K among volumes with a finding)."""
    from medalign.tasks.protocols import ct_clip_report_to_volume_recall, ct_clip_volume_to_volume

    rng = np.random.default_rng(5)
    n, d = 60, 8
    volumes = rng.normal(size=(n, d))
    reports = volumes + rng.normal(scale=1.5, size=(n, d))
    labels = (rng.random((n, 5)) < 0.3).astype(int)
    got = ct_clip_report_to_volume_recall(reports, volumes, ks=(5, 10, 50, 100))
    for k in (5, 10, 50):
        hits = 0
        for i in range(n):
            scores = [float(np.dot(reports[i], volumes[j])) for j in range(n)]
            top = sorted(range(n), key=lambda j: -scores[j])[:k]
            hits += i in top
        assert got[k] == pytest.approx(hits / n, abs=1e-12)
    assert got[100] is None
    v2v = ct_clip_volume_to_volume(volumes, labels, ks=(1, 5, 10))
    candidates = [j for j in range(n) if labels[j].sum() > 0]
    collected = []
    for k in (1, 5, 10):
        per_query = []
        for i in range(n):
            cos = [float(np.dot(volumes[i], volumes[j]) / np.linalg.norm(volumes[i]) / np.linalg.norm(volumes[j])) for j in candidates]
            top = sorted(range(len(candidates)), key=lambda c: -cos[c])[:k]
            ratios = []
            for c in top:
                a, b = labels[i], labels[candidates[c]]
                both, one = int(((a == 1) & (b == 1)).sum()), int((a != b).sum())
                ratios.append(both / (both + one) if both + one else 0.0)
            per_query.append(np.mean(ratios))
        collected += per_query
        assert v2v["per_k"][k] == pytest.approx(np.mean(per_query), abs=1e-9)
        assert v2v["as_their_code_prints"][k] == pytest.approx(np.mean(collected), abs=1e-9)
