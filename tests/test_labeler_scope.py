"""The labeler on the phrasing classes of real reports (sentences written for these tests, none copied
from a report set): cue scopes over lists and location phrases, hedges, terminators, concept patterns
matched on lemmas, the uncertain-label policy, labels users bring (prep --labels) and the audit."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from nibabel.testing import data_path

from medalign.config import load_config
from medalign.data.dataset import soft_labels
from medalign.errors import ConfigError
from medalign.losses import targets_from_labels
from medalign.reports.labeler import ReportLabeler
from medalign.reports.lexicon import lemma
from medalign.reports.vocabulary import load_vocabulary
from medalign.train.config import PretrainConfig
from medalign.cli.main import main as cli

CT = ReportLabeler(load_vocabulary("chest_ct"))
OCT = ReportLabeler(load_vocabulary("oct"))


def _mentioned(labeler: ReportLabeler, text: str) -> dict[str, int]:
    return {k: v for k, v in labeler.label(text).items() if v is not None}


@pytest.mark.parametrize("text, expected", [
    # a leading negation governs a whole list, up to the list's own verb
    ("No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax is identified.",
     {"consolidation": 0, "lung opacity": 0, "pleural effusion": 0}),
    ("The lungs are clear of consolidation, nodules or pleural effusion.", {"consolidation": 0, "lung nodule": 0, "pleural effusion": 0}),
    ("Lung parenchyma free of emphysema and bronchiectasis.", {"emphysema": 0, "bronchiectasis": 0}),
    ("Both lungs are aerated without atelectasis, consolidation, or effusion.", {"atelectasis": 0, "consolidation": 0, "pleural effusion": 0}),
    # a trailing cue reaches back over a location phrase
    ("Pleural effusion in the right costophrenic angle is not seen.", {"pleural effusion": 0}),
    ("A pericardial effusion around the right atrium was not detected.", {"pericardial effusion": 0}),
    ("Consolidation in the left lower lobe cannot be excluded.", {"consolidation": -1}),
    ("A small nodule in the lingula is unlikely.", {"lung nodule": -1}),
    ("Hiatal hernia of the sliding type is not observed.", {"hiatal hernia": 0}),
    # ... but not over another clause's verb or an unlisted comma
    ("The heart is enlarged, pleural effusion is not seen.", {"cardiomegaly": 1, "pleural effusion": 0}),
    ("Emphysema in the upper lobes, atelectasis not seen.", {"emphysema": 1, "atelectasis": 0}),
    # hedges before or after
    ("The opacity may represent atelectasis.", {"lung opacity": 1, "atelectasis": -1}),
    ("The appearance suggests early consolidation.", {"consolidation": -1}),
    ("Linear densities, in favor of atelectasis.", {"atelectasis": -1}),
    ("Question of a small pericardial effusion.", {"pericardial effusion": -1}),
    ("Right basal atelectasis versus consolidation.", {"atelectasis": -1, "consolidation": -1}),
    ("Bronchiectasis?", {"bronchiectasis": -1}),
    ("No consolidation to suggest pneumonia.", {"consolidation": 0}),
    # terminators and new clauses end a scope
    ("No pleural effusion, but there is consolidation in the right lower lobe.", {"pleural effusion": 0, "consolidation": 1}),
    ("No nodule; however, emphysema is present.", {"lung nodule": 0, "emphysema": 1}),
    ("No pleural effusion and the heart is enlarged.", {"pleural effusion": 0, "cardiomegaly": 1}),
    ("No mediastinal lymphadenopathy, although the heart is mildly enlarged.", {"lymphadenopathy": 0, "cardiomegaly": 1}),
    ("Possible small nodule, no pleural effusion.", {"lung nodule": -1, "pleural effusion": 0}),
    # a list closed by "or" is over: ", and" after it starts a clause of its own
    ("There is no pleural effusion or nodule, and minimal atelectasis is observed in the left lower lobe.",
     {"pleural effusion": 0, "lung nodule": 0, "atelectasis": 1}),
    # a hedge reaches over a list that ends in "and"/"or", or that a differential introduces; an
    # impression's comma list without one names diagnoses of their own
    ("Findings suggestive of consolidation, atelectasis or pleural effusion.",
     {"consolidation": -1, "atelectasis": -1, "pleural effusion": -1}),
    ("Differential diagnosis includes consolidation, atelectasis, bronchiectasis.",
     {"consolidation": -1, "atelectasis": -1, "bronchiectasis": -1}),
    ("Findings in favor of consolidation, mediastinal lymphadenopathy.", {"consolidation": -1, "lymphadenopathy": 1}),
    ("Probable atelectasis, less likely consolidation.", {"atelectasis": -1, "consolidation": -1}),
    # a negated hedge is a negation
    ("There are no findings in favor of pericardial effusion.", {"pericardial effusion": 0}),
    ("No findings suggestive of bronchiectasis.", {"bronchiectasis": 0}),
    # history and requests say nothing about this study
    ("History of pleural effusion. Evaluate for pneumonia or consolidation.", {}),
    # pseudo-negations
    ("No change in the small left pleural effusion.", {"pleural effusion": 1}),
    ("No significant interval change of the right pleural effusion.", {"pleural effusion": 1}),
    ("Without appreciable change, emphysema in both upper lobes.", {"emphysema": 1}),
    # ... but "no" before a descriptive word and "changes of" is a negation
    ("No acute changes of bronchiectasis, no consolidation.", {"bronchiectasis": 0, "consolidation": 0}),
    # "maybe" hedges; a clinical condition hedges the whole statement, across the clause after its comma
    ("Maybe early consolidation in the lingula.", {"consolidation": -1}),
    ("In the appropriate clinical setting, this is compatible with consolidation.", {"consolidation": -1}),
    ("In the appropriate clinical setting, consolidation is possible; the heart is enlarged.", {"consolidation": -1, "cardiomegaly": 1}),
])
def test_cue_scopes(text, expected):
    assert _mentioned(CT, text) == expected


@pytest.mark.parametrize("text, expected", [
    # an observation at a site, in either order, with plurals, hyphens and words between
    ("Calcified and atheromatous plaques are seen in the coronary arteries and in the aortic wall.",
     {"coronary artery wall calcification": 1, "arterial wall calcification": 1}),
    ("Calcifications of the aortic wall.", {"arterial wall calcification": 1}),
    ("Aortic-wall calcification.", {"arterial wall calcification": 1}),
    ("Coronary artery calcifications.", {"coronary artery wall calcification": 1}),
    ("No calcified plaque in the coronary arteries.", {"coronary artery wall calcification": 0}),
    ("Mediastinal lymph nodes with a short axis of 13 mm.", {"lymphadenopathy": 1}),
    ("Lymph nodes of pathological size were not detected in the mediastinum or hila.", {"lymphadenopathy": 0}),
    ("Enlarged hilar lymph nodes.", {"lymphadenopathy": 1}),
    ("Sequelae changes and fibrotic bands in both lower lobes.", {"pulmonary fibrotic sequela": 1}),
    ("The size of the heart is increased.", {"cardiomegaly": 1}),
    ("The heart is not enlarged.", {"cardiomegaly": 0}),
    ("Pleural effusion-thickening was not detected.", {"pleural effusion": 0}),
    ("Fluid in the right pleural space.", {"pleural effusion": 1}),
    ("Dilated bronchi with thickened bronchial walls in the lower lobes.", {"bronchiectasis": 1, "peribronchial thickening": 1}),
    ("Interlobular septa are thickened.", {"interlobular septal thickening": 1}),
    ("Multiple bullae in the apices.", {"emphysema": 1}),
    ("Ground-glass density increases in both lungs.", {"lung opacity": 1}),
    # what breaks a pattern: a node between the observation and the heart; an organ's own nodule
    ("Enlarged lymph node adjacent to the heart.", {"lymphadenopathy": 1}),
    ("A 9 mm thyroid nodule.", {}),
    ("Pericardial effusion is present.", {"pericardial effusion": 1}),
    ("Calcified atheroma plaques were observed in the walls of the aorta and the coronary arteries.",
     {"arterial wall calcification": 1, "coronary artery wall calcification": 1}),
    ("Cardiothoracic ratio increased.", {"cardiomegaly": 1}),
    ("Minimal pericardial thickening-effusion is observed.", {"pericardial effusion": 1}),
    ("Changes secondary to sternotomy.", {"medical material": 1}),
    ("Subpleural reticular densities and honeycomb appearance in the lower lobes.", {"pulmonary fibrotic sequela": 1}),
    # a lymph node is decided by its short axis against 10 mm, whatever the adjective
    ("Several mediastinal lymph nodes, the largest measuring 16x11 mm.", {"lymphadenopathy": 1}),
    ("Lymph nodes, the largest of which was 14x11 mm, in the subcarinal area.", {"lymphadenopathy": 1}),
    ("Right hilar lymph nodes measuring 1.5 x 1.2 cm.", {"lymphadenopathy": 1}),
    ("Mediastinal lymph nodes with a short axis below 1 cm.", {"lymphadenopathy": 0}),
    ("A few paratracheal lymph nodes up to 8 mm.", {"lymphadenopathy": 0}),
    ("Lymph nodes are seen in the prevascular area, the largest 15x6 mm.", {"lymphadenopathy": 0}),
    ("Subcarinal lymph node measuring 22 mm in long axis and 8 mm in short axis.", {"lymphadenopathy": 0}),
    ("Subcarinal lymph node measuring 22 mm in long axis and 12 mm in short axis.", {"lymphadenopathy": 1}),
    ("No lymph node larger than 10 mm in short axis.", {"lymphadenopathy": 0}),
    # a size nearer to another finding is that finding's; a size across a clause break is not the node's
    ("A 12 mm nodule in the right lower lobe beside a hilar lymph node.", {"lung nodule": 1}),
    ("Hilar lymph node; a 14 mm nodule in the lingula.", {"lung nodule": 1}),
])
def test_concept_patterns(text, expected):
    assert _mentioned(CT, text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Small pigment epithelial detachment with overlying subretinal fluid.", {"pigment epithelial detachment": 1, "subretinal fluid": 1}),
    ("No intraretinal cysts. Vitreomacular traction cannot be excluded.", {"intraretinal cysts": 0, "vitreomacular traction": -1}),
    ("Cystic spaces in the inner nuclear layer.", {"intraretinal cysts": 1}),
    ("RPE atrophy with hypertransmission, consistent with geographic atrophy.", {"geographic atrophy": 1}),
    ("Lamellar macular hole and epiretinal membrane.", {"macular hole": 1, "epiretinal membrane": 1}),
    ("Fluid beneath the neurosensory retina is not seen.", {"subretinal fluid": 0}),
])
def test_oct_vocabulary(text, expected):
    assert _mentioned(OCT, text) == expected


@pytest.mark.parametrize("text, dims, bound, axis", [
    ("the largest measuring 16x11 mm", (16.0, 11.0), "=", ""),
    ("16 x 11 x 9 mm", (16.0, 11.0, 9.0), "=", ""),
    ("1.5x1.2 cm", (15.0, 12.0), "=", ""),
    ("a 12mm node", (12.0,), "=", ""),
    ("short axis of 13 millimeters", (13.0,), "=", "short"),
    ("less than 1 cm", (10.0,), "<", ""),
    ("larger than 10 mm in short axis", (10.0,), ">", "short"),
    ("22 mm in long axis", (22.0,), "=", "long"),
])
def test_measurements(text, dims, bound, axis):
    from medalign.reports.lexicon import tokenize
    from medalign.reports.measure import find_measurements

    (m,) = find_measurements(tokenize(text))
    assert m.dims_mm == pytest.approx(dims) and m.bound == bound and m.axis == axis


def test_numbers_without_a_unit_are_no_size():
    from medalign.reports.lexicon import tokenize
    from medalign.reports.measure import find_measurements

    assert find_measurements(tokenize("T12 vertebra, 3 levels, segment 6, 2 nodes")) == []


def test_lemmas():
    words = ["opacities", "bullae", "masses", "atelectasis", "metastases", "nodules", "effusions", "apices", "bronchi", "changes"]
    assert [lemma(w) for w in words] == ["opacity", "bulla", "mass", "atelectasis", "metastasis", "nodule", "effusion", "apex",
                                         "bronchus", "change"]


def test_mentions_say_what_decided():
    (m,) = CT.mentions("Pleural effusion in the right costophrenic angle is not seen.")
    assert m.label == 0 and m.sentence[m.trigger[0]:m.trigger[1]] == "Pleural effusion"
    assert m.sentence[m.cue[0]:m.cue[1]] == "is not seen" and m.cue_kind == "negated"


@pytest.mark.parametrize("pattern, message", [
    ({"site": ["coronary"]}, "observation"),
    ({"observation": ["plaque"], "sites": ["coronary"]}, r"v.yaml: unknown key 'findings\[0\].patterns\[0\].sites'"),
    ({"observation": ["plaque"], "within": 0}, "within"),
    ({"observation": ["node"], "min_size_mm": 0}, "min_size_mm"),
])
def test_vocabulary_patterns_are_checked(tmp_path, pattern, message):
    import yaml

    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"findings": [{"name": "x", "patterns": [pattern]}]}))
    with pytest.raises(ConfigError, match=message):
        load_vocabulary(path)


# --- the uncertain-label policy ---------------------------------------------------------------

def test_uncertain_policy_in_soft_labels():
    labels = np.array([[1, -1, np.nan, 0]], np.float32)
    assert soft_labels(labels, "positive").tolist() == [[1, 1, 0, 0]]
    assert soft_labels(labels, "negative").tolist() == [[1, 0, 0, 0]]
    assert soft_labels(labels, "half").tolist() == [[1, 0.5, 0, 0]]
    ignored = soft_labels(labels, "ignore")
    assert ignored[0, 0] == 1 and np.isnan(ignored[0, 1]) and ignored[0, 2] == 0


def test_ignored_labels_leave_the_pair_similarity_float64_reference():
    """Targets with ignored (NaN) entries equal a float64 loop over the entries both studies know."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(6, 4)).astype(np.float64)
    y[rng.random(y.shape) < 0.3] = np.nan
    got = targets_from_labels(torch.from_numpy(y).float(), mix=1.0).double().numpy()
    ref = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            both = np.isfinite(y[i]) & np.isfinite(y[j])
            yi = np.append(np.where(both, np.nan_to_num(y[i]), 0), 1 - np.nanmax(np.append(y[i], 0)))
            yj = np.append(np.where(both, np.nan_to_num(y[j]), 0), 1 - np.nanmax(np.append(y[j], 0)))
            ref[i, j] = max(0.0, yi @ yj / max(np.linalg.norm(yi) * np.linalg.norm(yj), 1e-12))
    ref /= ref.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # two studies that differ only where one is uncertain are, for the loss, the same study
    same = torch.tensor([[1.0, float("nan")], [1.0, 1.0]])
    t = targets_from_labels(same)
    assert torch.allclose(t[0], t[0, [0, 0]])


def test_uncertain_policy_is_a_checked_config_key():
    assert load_config(PretrainConfig, "demo_ct", "pretrain").labels.uncertain == "half"
    assert load_config(PretrainConfig, "demo_ct", "pretrain", ["labels.uncertain=positive"]).labels.uncertain == "positive"
    with pytest.raises(ConfigError, match="labels.uncertain"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["labels.uncertain=maybe"])


# --- labels users bring -----------------------------------------------------------------------

def _two_nifti_studies(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two real NIfTI studies (nibabel's anatomical.nii) with reports, and a tiny prep config."""
    images = tmp_path / "images"
    images.mkdir()
    for sid in ("a", "b"):
        shutil.copy(Path(data_path) / "anatomical.nii", images / f"{sid}.nii")
    reports = tmp_path / "r.jsonl"
    reports.write_text('{"study_id": "a", "report": "No pleural effusion. Cardiomegaly."}\n'
                       '{"study_id": "b", "report": "Small pleural effusion. Heart size is normal."}\n')
    cfg = tmp_path / "p.yaml"
    cfg.write_text("steps:\n  - orientation: {axcodes: RAS}\n  - spacing: {pixdim: [4.0, 4.0, 4.0]}\n  - percentile_window: {}\n"
                   "  - crop_or_pad: {spatial_size: [16, 16, 16]}\nseries: {modalities: [MR]}\n")
    return images, reports, cfg


@pytest.mark.parametrize("id_column, ids", [("study_id", ("a", "b")), ("VolumeName", ("a.nii.gz", "b.nii.gz"))])
def test_prep_takes_given_labels_that_win(tmp_path, id_column, ids):
    images, reports, cfg = _two_nifti_studies(tmp_path)
    given = tmp_path / "labels.csv"
    given.write_text(f"{id_column},Pleural Effusion,cardiomegaly\n{ids[0]},1,\n{ids[1]},1,-1\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(cfg),
                "--workers", "1", "--labels", str(given)]) == 0
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert rows["a"]["pleural effusion"] == 1 and rows["a"]["cardiomegaly"] == 1  # given 1 wins; empty keeps the labeler's 1
    assert rows["b"]["pleural effusion"] == 1 and rows["b"]["cardiomegaly"] == -1
    log = (out / "prep.log").read_text()
    assert "| pleural effusion | 2 | 2 | 1 | 1 | 50.0% |" in log  # study a: given 1, labeler 0
    assert "| cardiomegaly | 1 | 0 | 0 | 0 | 100.0% |" in log


def test_prep_refuses_a_label_column_that_names_no_finding(tmp_path, capsys):
    images, reports, cfg = _two_nifti_studies(tmp_path)
    given = tmp_path / "labels.csv"
    given.write_text("study_id,pleural effusion,pneumothorax\na,1,0\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(cfg),
                "--labels", str(given)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pneumothorax" in err[0] and "labels.csv" in err[0]
    assert not out.exists()  # stopped before any work


# --- the audit ----------------------------------------------------------------------------------

def test_label_audit_counts_and_highlights(tmp_path):
    reports = tmp_path / "r.csv"
    with open(reports, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study_id", "report"])
        w.writerow(["s1", "Pleural effusion in the right costophrenic angle is not seen. Cardiomegaly."])
        w.writerow(["s2", "Small left pleural effusion. The heart is not enlarged."])
        w.writerow(["s3", "Consolidation cannot be excluded. Dr. John Smith was informed on 12/03/2024."])
    audit = tmp_path / "audit"
    assert cli(["label", "--reports", str(reports), "--out", str(tmp_path / "l.csv"), "--audit", str(audit)]) == 0
    summary = {r["finding"]: r for r in csv.DictReader(open(audit / "audit.csv", encoding="utf-8"))}
    assert (summary["pleural effusion"]["present"], summary["pleural effusion"]["negated"]) == ("1", "1")
    assert summary["cardiomegaly"]["present"] == "1" and summary["cardiomegaly"]["negated"] == "1"
    assert summary["consolidation"]["uncertain"] == "1" and float(summary["pleural effusion"]["prevalence"]) == pytest.approx(1 / 3, abs=1e-4)
    sentences = list(csv.DictReader(open(audit / "audit_sentences.csv", encoding="utf-8")))
    negated = next(r for r in sentences if r["finding"] == "pleural effusion" and r["label"] == "0")
    assert negated["trigger"] == "Pleural effusion" and negated["cue"] == "is not seen"
    page = (audit / "audit.html").read_text(encoding="utf-8")
    assert '<mark class="trigger">Pleural effusion</mark> in the right costophrenic angle <mark class="cue">is not seen</mark>' in page
    assert "John Smith" not in page and "12/03/2024" not in page
    browser = next((p for p in map(shutil.which, ("chromium-headless-shell", "chromium", "google-chrome")) if p), None)
    if browser is None:
        pytest.skip("no headless Chromium on PATH (make test installs chromium-headless-shell with apt-get; needs root)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu"]
    dom = subprocess.run(flags + ["--dump-dom", (audit / "audit.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and dom.stdout.count('<mark class="cue">') >= 3, dom.stderr[-2000:]
    shot = tmp_path / "audit.png"
    res = subprocess.run(flags + ["--window-size=1000,800", f"--screenshot={shot}", (audit / "audit.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(shot))[..., :3]
    # the highlight colours are on screen: the trigger's yellow and the cue's blue
    assert np.any(np.all(np.abs(pixels - np.array([1.0, 0.878, 0.541])) < 0.02, axis=-1))
    assert np.any(np.all(np.abs(pixels - np.array([0.659, 0.847, 1.0])) < 0.02, axis=-1))

