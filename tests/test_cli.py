"""The command-line contract end to end on a small phantom set, and its error behaviour."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medalign.cli.main import main as cli

MEDALIGN = [sys.executable, "-m", "medalign.cli.main"]


def test_training_reduces_the_loss(trained_run):
    rows = [r for r in csv.DictReader(open(trained_run / "logs" / "metrics.csv")) if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in rows]
    assert len(losses) >= 10
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    export = trained_run / "model"
    for name in ("config.json", "model.safetensors", "prep_config.yaml", "vocab.yaml", "text/config.json", "text/tokenizer.json"):
        assert (export / name).is_file(), name
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()


def test_zeroshot_dataset_metrics_match_sklearn(trained_run, prepared_ct, phantom_ct, tmp_path):
    out = tmp_path / "zs"
    assert cli(["zeroshot", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--labels", str(phantom_ct / "labels.csv"), "--split", "all", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    scores = list(csv.DictReader(open(out / "scores.csv")))
    truth = {r["study_id"]: r for r in csv.DictReader(open(phantom_ct / "labels.csv"))}
    aurocs = []
    for f in ("pleural effusion", "cardiomegaly", "emphysema"):
        y = [int(truth[r["study_id"]][f]) for r in scores]
        s = [float(r[f]) for r in scores]
        ref = roc_auc_score(y, s)
        assert metrics["per_finding"][f]["auroc"] == pytest.approx(ref, abs=1e-4)
        aurocs.append(ref)
    assert 0.0 <= metrics["macro_auroc"] <= 1.0
    # findings absent from the labels file have no ground truth and are not averaged
    assert metrics["per_finding"]["hiatal hernia"]["auroc"] is None
    assert metrics["n_findings_evaluated"] == 5
    img = mpimg.imread(out / "roc.png")
    assert img.ndim == 3 and img.shape[0] > 200


def test_zeroshot_one_raw_study_prints_json(trained_run, phantom_ct):
    study = sorted((phantom_ct / "images").iterdir())[0]
    res = subprocess.run(MEDALIGN + ["zeroshot", "--checkpoint", str(trained_run), "--study", str(study)], capture_output=True, text=True, check=True)
    data = json.loads(res.stdout)
    assert data["study"] == study.name
    assert len(data["probabilities"]) == 18
    assert all(0.0 <= p <= 1.0 for p in data["probabilities"].values())
    # each finding: its score, the validation threshold stored in the export, and the call they make
    stored = json.loads((trained_run / "model" / "thresholds.json").read_text())
    assert "validation split" in stored["source"] and data["threshold_source"] == stored["source"]
    assert stored["thresholds"], "the phantom's val split holds both classes of some finding"
    for name, f in data["findings"].items():
        thr = stored["thresholds"].get(name)
        assert f["threshold"] == (None if thr is None else round(thr, 4))
        assert f["call"] == (None if thr is None else ("positive" if f["score"] >= thr else "negative"))


def test_a_nifti_study_needs_the_models_modality_confirmed(trained_run, tmp_path):
    from nibabel.testing import data_path

    nii = Path(data_path) / "anatomical.nii"  # a brain MR: nothing in the file says so
    res = subprocess.run(MEDALIGN + ["zeroshot", "--checkpoint", str(trained_run), "--study", str(nii)], capture_output=True, text=True)
    assert res.returncode == 2 and "carries no modality" in res.stderr and "--modality ct" in res.stderr
    res = subprocess.run(MEDALIGN + ["zeroshot", "--checkpoint", str(trained_run), "--study", str(nii), "--modality", "ct"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_index_and_retrieve(trained_run, prepared_ct, phantom_ct, tmp_path):
    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index)]) == 0
    info = json.loads((index / "index.json").read_text())
    assert info["count"] == 48
    emb = np.load(index / "study_embeddings.npy")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    study = sorted((phantom_ct / "images").iterdir())[1]
    out = tmp_path / "r1"
    assert cli(["retrieve", "--index", str(index), "--study", str(study), "--k", "4", "--out", str(out)]) == 0
    hits = json.loads((out / "results.json").read_text())
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert study.name not in [h["study_id"] for h in hits]  # the query itself is not its own neighbour
    assert all(set(h) >= {"rank", "study_id", "score", "impression"} for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    # scores equal brute-force inner products with the indexed embeddings
    ids = [json.loads(line)["study_id"] for line in (index / "meta.jsonl").read_text().splitlines()]
    self_emb = emb[ids.index(study.name)]
    for h in hits:
        assert h["score"] == pytest.approx(float(emb[ids.index(h["study_id"])] @ self_emb), abs=1e-3)
    assert mpimg.imread(out / "montage.png").shape[0] > 300
    out2 = tmp_path / "r2"
    assert cli(["retrieve", "--index", str(index), "--text", "large pleural effusion", "--k", "3", "--out", str(out2)]) == 0
    assert len(json.loads((out2 / "results.json").read_text())) == 3


def test_label_command(phantom_ct, tmp_path):
    out = tmp_path / "labels.csv"
    assert cli(["label", "--reports", str(phantom_ct / "reports.csv"), "--out", str(out)]) == 0
    got = {r["study_id"]: r for r in csv.DictReader(open(out))}
    truth = list(csv.DictReader(open(phantom_ct / "labels.csv")))
    for row in truth:
        assert (got[row["study_id"]]["cardiomegaly"] == "1") == (row["cardiomegaly"] == "1")
        assert got[row["study_id"]]["hiatal hernia"] == ""  # not mentioned


def test_convert_writes_nifti(phantom_ct, tmp_path):
    import nibabel as nib

    study = sorted((phantom_ct / "images").iterdir())[0]
    out = tmp_path / "vol.nii.gz"
    assert cli(["convert", str(study), str(out)]) == 0
    img = nib.load(str(out))
    assert img.shape == (96, 96, 40)
    assert np.asarray(img.dataobj).min() >= -1024


def test_convert_takes_a_derived_enhanced_ct_and_agrees_with_dcm2niix(tmp_path, capsys):
    """convert is not the training policy: pydicom-data's real Enhanced CT (image type DERIVED)
    converts, and its NIfTI agrees with dcm2niix's after canonical reorientation."""
    import shutil

    import nibabel as nib
    from pydicom.data import get_testdata_file

    folder = tmp_path / "ect"
    folder.mkdir()
    shutil.copy(get_testdata_file("eCT_Supplemental.dcm", download=False), folder / "x")
    out = tmp_path / "ect.nii.gz"
    assert cli(["convert", str(folder), str(out)]) == 0
    assert "CT axial DERIVED/PRIMARY" in capsys.readouterr().out
    (tmp_path / "ref").mkdir()
    subprocess.run([str(Path(sys.executable).parent / "dcm2niix"), "-z", "n", "-o", str(tmp_path / "ref"), str(folder)],
                   check=True, capture_output=True)
    ref = nib.as_closest_canonical(nib.load(str(next((tmp_path / "ref").glob("*.nii")))))
    mine = nib.as_closest_canonical(nib.load(str(out)))
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine.affine, ref.affine, atol=0.01)
    np.testing.assert_allclose(np.asarray(mine.dataobj), np.asarray(ref.dataobj, dtype=np.float64), atol=0.5)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["prep", "--images", "/no/such/dir", "--reports", "x.csv", "--out", "y"], "/no/such/dir: folder not found"),
        (["pretrain", "--data", ".", "--out", "r", "--bogus"], "unrecognized arguments: --bogus"),
        (["zeroshot", "--checkpoint", "/nope", "--data", "."], "/nope: no such file or folder"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, needle):
    res = subprocess.run(MEDALIGN + argv, capture_output=True, text=True)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_user_errors_inside_commands_exit_2(prepared_ct, tmp_path):
    res = subprocess.run(MEDALIGN + ["pretrain", "--data", str(prepared_ct), "--out", str(tmp_path / "r"), "optim.lrr=1"], capture_output=True, text=True)
    assert res.returncode == 2 and "command line: optim.lrr=1: unknown key 'optim.lrr'" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(MEDALIGN + ["zeroshot", "--checkpoint", str(tmp_path), "--data", str(prepared_ct), "--out", str(tmp_path / "z")], capture_output=True, text=True)
    assert res.returncode == 2 and "not a run folder" in res.stderr


def test_synth_refuses_a_folder_with_studies(phantom_ct):
    res = subprocess.run(MEDALIGN + ["synth", "--out", str(phantom_ct), "--studies", "2"], capture_output=True, text=True)
    assert res.returncode == 2 and "already holds studies" in res.stderr


def test_checkpoint_file_resolves_to_its_runs_export(trained_run, phantom_ct):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    study = sorted((phantom_ct / "images").iterdir())[2]
    res = subprocess.run(MEDALIGN + ["zeroshot", "--checkpoint", str(ckpt), "--study", str(study)], capture_output=True, text=True, check=True)
    assert set(json.loads(res.stdout)["probabilities"]) >= {"pleural effusion", "emphysema"}


def test_study_to_report_retrieval_and_recall(trained_run, prepared_ct, phantom_ct, tmp_path):
    from medalign.metrics import paired_recall_at_k

    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index)]) == 0
    study = sorted((phantom_ct / "images").iterdir())[0]
    out = tmp_path / "r"
    assert cli(["retrieve", "--index", str(index), "--study", str(study), "--target", "reports", "--k", "3", "--out", str(out)]) == 0
    assert len(json.loads((out / "results.json").read_text())) == 3
    # Recall@K against a brute-force count of ranks
    reports, studies = np.load(index / "report_embeddings.npy"), np.load(index / "study_embeddings.npy")
    sims = reports.astype(np.float64) @ studies.T.astype(np.float64)  # as the metric computes (ties are true ties)
    rank_of_pair = np.array([(sims[i] > sims[i, i]).sum() for i in range(len(sims))])
    got = paired_recall_at_k(reports, studies, ks=(1, 5))
    assert got["recall@1"] == pytest.approx(np.mean(rank_of_pair < 1))
    assert got["recall@5"] == pytest.approx(np.mean(rank_of_pair < 5))
    assert got["chance@5"] == pytest.approx(5 / len(sims))


def test_retrieval_eval_against_an_independent_loop(trained_run, prepared_ct, phantom_ct, tmp_path):
    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index)]) == 0
    out = tmp_path / "ev"
    assert cli(["retrieval-eval", "--index", str(index), "--data", str(prepared_ct), "--split", "all", "--labels", str(phantom_ct / "labels.csv"),
                "--protocol", "ct-clip", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["report_to_study"]) >= {"recall@1", "recall@5", "recall@10"} and "map@10" in m["study_to_study"]
    # CT-CLIP's figures beside medalign's: its report->volume R@5 counts a tie in the report's favour where medalign does not
    protocol = m["protocol"]
    assert protocol["report_to_volume_recall"]["5"] >= m["report_to_study"]["recall@5"] - 1e-9 and protocol["report_to_volume_recall"]["50"] is None
    assert 0 < protocol["volume_to_volume"]["per_k"]["1"] <= 1 and protocol["volume_to_volume"]["candidates"] < 48
    meta = [json.loads(line) for line in (index / "meta.jsonl").read_text().splitlines()]
    truth = {r["study_id"]: r for r in csv.DictReader(open(phantom_ct / "labels.csv"))}
    findings = [c for c in next(iter(truth.values())) if c != "study_id"]
    pos = [{f for f in findings if truth[x["study_id"]][f] == "1"} for x in meta]
    emb = np.load(index / "study_embeddings.npy")
    aps = []
    for i in range(len(meta)):
        def relevant(j):
            return bool(pos[i] & pos[j]) or (not pos[i] and not pos[j])

        others = sorted((j for j in range(len(meta)) if j != i), key=lambda j: -float(emb[i].astype(np.float64) @ emb[j].astype(np.float64)))
        n_rel = sum(relevant(j) for j in others)
        hits, total = 0, 0.0
        for r, j in enumerate(others[:10], 1):
            if relevant(j):
                hits += 1
                total += hits / r
        aps.append(total / min(n_rel, 10) if n_rel else 0.0)
    assert m["study_to_study"]["map@10"] == pytest.approx(np.mean(aps), abs=1e-6)
    assert 0 < m["study_to_study"]["chance_map@10"] < 1
    assert m["report_to_study"]["chance@5"] == pytest.approx(5 / 48)


def test_demo_runs_every_stage_and_prints_the_summary(tmp_path):
    out = tmp_path / "demo"
    # what an earlier demo left in the folder: a rerun starts clean instead of mixing two phantom sets
    stale = [out / "raw" / "images" / "ct0700099", out / "run" / "checkpoints", out / "dataset" / "volumes"]
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "left_by_an_earlier_demo").write_text("x")
    res = subprocess.run(MEDALIGN + ["demo", "--out", str(out), "--studies", "40", "--max-steps", "3"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "medalign demo (CT) finished" in res.stdout and "macro AUROC" in res.stdout
    for path in ("zeroshot/metrics.json", "zeroshot/roc.png", "retrieve_study/montage.png", "retrieve_text/results.json",
                 "retrieval_eval/metrics.json", "run/model/model.safetensors", "dataset/manifest.parquet"):
        assert (out / path).is_file(), path
    assert not any((folder / "left_by_an_earlier_demo").exists() for folder in stale)
    assert len(list((out / "raw" / "images").iterdir())) == 40
    # the demo explains the nodule on the first test study the phantom drew one in, and says whether the map's peak found it
    test_ids = [r["study_id"] for r in csv.DictReader(open(out / "zeroshot" / "scores.csv", encoding="utf-8"))]
    nodules = {r["study_id"] for r in csv.DictReader(open(out / "raw" / "labels.csv", encoding="utf-8")) if r["lung nodule"] == "1"}
    explained = next((sid for sid in test_ids if sid in nodules), test_ids[0])
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("why: lung nodule"))
    assert explained in line and "explain/lung_nodule.png" in line
    assert re.search(r"rise map; its peak (is in|misses) the drawn lesion", line) if explained in nodules else line.rstrip().endswith("rise map")
    assert (out / "explain" / "lung_nodule.png").is_file() and (out / "explain" / "lung_nodule.nii.gz").is_file()
    assert "zeroshot --explain: method rise (auto" in (out / "explain" / "command_output.txt").read_text()  # its answer in a file
    assert '"max_voxel"' not in res.stdout  # not between the demo's steps


def test_export_writes_the_checkpoints_weights(trained_run, tmp_path, capsys):
    """``medalign export RUN`` rebuilds the model folder from last.ckpt: the same tensors, thresholds and
    card as the end-of-run export; an export already in the folder is kept unless --overwrite."""
    from safetensors.torch import load_file

    out = tmp_path / "exported"
    assert cli(["export", str(trained_run), "--out", str(out)]) == 0
    a, b = load_file(str(trained_run / "model" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "prep_config.yaml").is_file() and (out / "vocab.yaml").is_file() and (out / "text" / "config.json").is_file()
    # the dataset run.json names is found again: the same operating points, fitted on the same val split
    mine, theirs = (json.loads((f / "thresholds.json").read_text())["thresholds"] for f in (out, trained_run / "model"))
    assert mine and mine == theirs
    assert (out / "MODEL_CARD.md").read_text().startswith("# Model card: medalign CT dual encoder")
    capsys.readouterr()
    kept = (out / "model.safetensors").stat().st_mtime_ns
    assert cli(["export", str(trained_run), "--out", str(out)]) == 2
    assert f"{out}: already holds an exported model; nothing was changed" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == kept
    assert cli(["export", str(trained_run), "--out", str(out), "--overwrite"]) == 0
    assert cli(["export", str(trained_run)]) == 2  # RUN/model holds the end-of-run export
    capsys.readouterr()
    assert cli(["export", str(trained_run), "--checkpoint", "best"]) == 2
    assert "best.ckpt: no such checkpoint: no best checkpoint is chosen without validation (validation.every_n_steps is not set)" in capsys.readouterr().err


def test_retrieve_html_is_a_self_contained_page(trained_run, prepared_ct, phantom_ct, tmp_path):
    """The page parses, inlines every image as a decodable PNG, and loads nothing from outside."""
    import base64
    import io
    from html.parser import HTMLParser

    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index), "--split", "test"]) == 0
    study = next(p for p in sorted((phantom_ct / "images").iterdir()))
    out = tmp_path / "q"
    assert cli(["retrieve", "--index", str(index), "--study", str(study), "--k", "3", "--out", str(out), "--html"]) == 0

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.srcs, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            a = dict(attrs)
            if "src" in a or "href" in a:
                self.srcs.append(a.get("src") or a.get("href"))

        def handle_data(self, data):
            self.text.append(data)

    page = Page()
    page.feed((out / "results.html").read_text(encoding="utf-8"))
    hits = json.loads((out / "results.json").read_text())
    assert page.tags.count("img") == 3 * (1 + len(hits)) and "script" not in page.tags
    assert all(s.startswith("data:image/png;base64,") for s in page.srcs)
    for s in page.srcs:
        img = mpimg.imread(io.BytesIO(base64.b64decode(s.split(",", 1)[1])), format="png")
        assert img.shape[0] > 10 and img.std() > 0.01  # a real slice, not a blank
    body = " ".join(page.text)
    assert all(h["study_id"] in body for h in hits) and f"{hits[0]['score']:.3f}" in body


def _headless_chromium() -> str | None:
    import shutil

    return next((p for p in map(shutil.which, ("chromium-headless-shell", "chromium", "google-chrome")) if p), None)


def test_retrieve_html_renders_in_headless_chromium(trained_run, prepared_ct, phantom_ct, tmp_path):
    """A real browser lays the page out: every image decodes at its size, every hit's text shows, and
    the screenshot holds the slices (not a blank page)."""
    browser = _headless_chromium()
    if browser is None:
        pytest.skip("no headless Chromium on PATH (make test installs chromium-headless-shell with apt-get; needs root)")
    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index), "--split", "test"]) == 0
    study = sorted((phantom_ct / "images").iterdir())[0]
    out = tmp_path / "q"
    assert cli(["retrieve", "--index", str(index), "--study", str(study), "--k", "3", "--out", str(out), "--html"]) == 0
    hits = json.loads((out / "results.json").read_text())
    page = (out / "results.html").read_text(encoding="utf-8")
    # the probe script is the test's, added to a copy: it reports what the browser actually rendered
    probe = (
        "<script>window.addEventListener('load',()=>{document.body.setAttribute('data-probe',JSON.stringify({"
        "images:[...document.images].map(i=>[i.complete,i.naturalWidth,i.naturalHeight,Math.round(i.getBoundingClientRect().width)]),"
        "text:document.body.innerText}))});</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(flags + ["--virtual-time-budget=5000", "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    import html as html_lib
    import re

    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, "the browser did not fire the load event"
    rendered = json.loads(html_lib.unescape(found.group(1)))
    assert len(rendered["images"]) == 3 * (1 + len(hits))
    for complete, width, height, shown in rendered["images"]:
        assert complete and width > 10 and height > 10 and shown == 220  # decoded, and laid out at the page's width
    assert all(h["study_id"] in rendered["text"] for h in hits) and f"score {hits[0]['score']:.3f}" in rendered["text"]

    shot = tmp_path / "page.png"
    res = subprocess.run(flags + ["--window-size=1200,1600", f"--screenshot={shot}", (out / "results.html").as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = mpimg.imread(str(shot))[..., :3]
    grey = pixels.mean(axis=-1)
    # the slices are drawn on black: a large dark, textured area, not a white page with captions only
    assert (grey < 0.5).mean() > 0.05 and grey[grey < 0.5].std() > 0.01


def _real_slice_as_series(name: str, n: int, step_mm: float, dst: Path) -> Path:
    """One real CT slice that pydicom ships, stacked ``n`` times ``step_mm`` apart along its normal as
    one series: real anatomy of another body part, at its own field of view."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file(name, download=False))
    iop = np.asarray(src.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.asarray(src.ImagePositionPatient, dtype=float)
    series = generate_uid()
    dst.mkdir(parents=True)
    for k in range(n):
        src.SeriesInstanceUID = series
        src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        src.ImagePositionPatient = [float(v) for v in origin + k * step_mm * normal]
        src.InstanceNumber = k + 1
        src.SliceThickness = step_mm
        src.save_as(dst / f"{k:03d}.dcm", enforce_file_format=True)
    return dst


def test_zeroshot_and_retrieve_say_when_a_study_is_out_of_distribution(trained_run, prepared_ct, phantom_ct, tmp_path, capsys):
    """The guard (issue 26): a phantom chest study the model never trained on reads in distribution; a
    real head CT (pydicom's, 221 mm across, stacked to 200 mm) reads out of it by its field of view, a
    real abdominal CT slice stacked to 300 mm (a chest-sized field) by its embedding; each says why,
    in the JSON and in one warning line, and retrieve --study writes the same verdict to query.json."""
    import pyarrow.parquet as pq

    test_ids = sorted({r["study_id"] for r in pq.read_table(prepared_ct / "manifest.parquet").to_pylist() if r["split"] == "test"})
    verdicts = {}
    for label, study in (("phantom", phantom_ct / "images" / test_ids[0]),
                         ("head", _real_slice_as_series("J2K_pixelrep_mismatch.dcm", 40, 5.0, tmp_path / "head")),
                         ("abdomen", _real_slice_as_series("explicit_VR-UN.dcm", 40, 7.5, tmp_path / "abdomen"))):
        capsys.readouterr()
        assert cli(["zeroshot", "--checkpoint", str(trained_run), "--study", str(study)]) == 0
        out = capsys.readouterr()
        data = json.loads(out.out)
        verdicts[label] = data
        assert data["out_of_distribution"] == bool(data["ood_reasons"])
        assert ("warning: " in out.err) == data["out_of_distribution"]
    assert not verdicts["phantom"]["out_of_distribution"], verdicts["phantom"]["ood_checks"]
    head = verdicts["head"]
    assert head["out_of_distribution"] and head["ood_checks"]["field_of_view"]["padding_share"] > 0.5
    assert any(r.startswith("field of view: the study covers 221 x") for r in head["ood_reasons"]), head["ood_reasons"]
    abdomen = verdicts["abdomen"]
    assert not abdomen["ood_checks"]["field_of_view"]["out_of_distribution"]
    assert abdomen["out_of_distribution"] and abdomen["ood_reasons"][0].startswith("embedding: its 5-NN cosine distance"), abdomen["ood_checks"]
    emb = abdomen["ood_checks"]["embedding"]
    # the JSON rounds to 4 decimals: the strict "above" is the flag asserted above, the rounded figures may tie
    assert emb["knn_distance"] >= emb["threshold"] >= verdicts["phantom"]["ood_checks"]["embedding"]["knn_distance"]

    # zeroshot --study --explain keeps the verdict in explain.json (one finding: each map is 10^7 voxels on this grid)
    one_finding = tmp_path / "one_finding.yaml"
    one_finding.write_text("findings:\n  - name: pleural effusion\n    synonyms: [pleural effusion]\n", encoding="utf-8")
    capsys.readouterr()
    assert cli(["zeroshot", "--checkpoint", str(trained_run), "--study", str(tmp_path / "head"), "--explain", str(tmp_path / "x"),
                "--explain-method", "gradcam", "--vocab", str(one_finding)]) == 0
    assert list(json.loads((tmp_path / "x" / "explain.json").read_text())["findings"]) == ["pleural effusion"]
    assert json.loads((tmp_path / "x" / "explain.json").read_text())["ood_reasons"] == head["ood_reasons"]
    assert "warning: " in capsys.readouterr().err

    index = tmp_path / "index"
    assert cli(["index", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(index)]) == 0
    capsys.readouterr()
    assert cli(["retrieve", "--index", str(index), "--study", str(tmp_path / "head"), "--out", str(tmp_path / "r"), "--k", "3"]) == 0
    query = json.loads((tmp_path / "r" / "query.json").read_text())
    assert query["out_of_distribution"] and query["ood_reasons"] == head["ood_reasons"]
    assert "warning: " in capsys.readouterr().err


def test_zeroshot_under_ct_clips_protocol_scores_its_prompts(trained_run, prepared_ct, phantom_ct, tmp_path, capsys):
    """``--protocol ct-clip``: scores.csv holds the softmax over CT-CLIP's prompt pair, and the
    protocol's AUROC is scikit-learn's on those scores; medalign's own figures stay beside it."""
    out = tmp_path / "zs"
    assert cli(["zeroshot", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--labels", str(phantom_ct / "labels.csv"),
                "--split", "all", "--protocol", "ct-clip", "--out", str(out)]) == 0
    assert "CT-CLIP's protocol" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    protocol = metrics["protocol"]
    scores = list(csv.DictReader(open(out / "scores.csv")))
    truth = {r["study_id"]: r for r in csv.DictReader(open(phantom_ct / "labels.csv"))}
    for f in ("pleural effusion", "cardiomegaly"):
        y = [int(truth[r["study_id"]][f]) for r in scores]
        assert protocol["per_finding"][f]["auroc"] == pytest.approx(roc_auc_score(y, [float(r[f]) for r in scores]), abs=1e-4)
        assert protocol["per_finding"][f]["auroc"] == pytest.approx(metrics["per_finding"][f]["auroc"], abs=1e-9)
    assert protocol["findings_scored"] == metrics["n_findings_evaluated"] == 5 and "CT-CLIP (Hamamci et al. 2024)" in protocol[
        "published_macro_auroc_ct_rate_valid"]


def test_demo_says_whether_the_maps_peak_is_in_the_drawn_lesion(tmp_path):
    """The demo's summary line: a peak inside the drawn lesion or one voxel from it is a hit, two voxels off a miss."""
    import nibabel as nib

    from medalign.cli.demo import _pointing

    mask = np.zeros((10, 9, 8), np.float32)
    mask[4:6, 4:6, 3:5] = 1.0
    (tmp_path / "lesions").mkdir()
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "lesions" / "lung_nodule.nii.gz")
    for peak, said in (([6, 4, 3], "is in"), ([7, 4, 3], "misses")):
        (tmp_path / "explain.json").write_text(json.dumps({"method": "rise (auto: …)", "findings": {"lung nodule": {"max_voxel": peak}}}))
        assert _pointing(tmp_path, tmp_path / "lesions", "lung nodule") == f"rise map; its peak {said} the drawn lesion"
    assert _pointing(tmp_path, tmp_path / "no_lesions", "lung nodule") == "rise map"
