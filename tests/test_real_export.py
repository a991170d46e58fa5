"""A hospital export, built from a real CT series (pydicom's dicomdirtests CT5N, 5 axial slices): every
good study prepared with its own report, every bad one named in errors.jsonl with the file and the
true reason, studies of one patient in one split, PatientID never written, the preset said aloud."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pydicom
import pytest
from conftest import REAL_CT_CONFIG as CONFIG
from conftest import by_position as _by_position
from conftest import copy_real_series as _copy_series
from conftest import write_reports as _reports

from medalign.cli.main import main as cli
from medalign.prep.splits import assign_split


def test_an_export_with_broken_studies(tmp_path):
    images = tmp_path / "images"
    _copy_series(images / "good")
    last = _by_position(_copy_series(images / "trunc_last"))[-1]
    ds = pydicom.dcmread(last)
    last.write_bytes(last.read_bytes()[: -len(ds.PixelData) // 2])  # the last slice's pixel data cut in half
    cut = _by_position(_copy_series(images / "header_cut"))[-1]
    cut.write_bytes(cut.read_bytes()[:400])  # ends inside the dataset's first elements
    _copy_series(images / "prior_and_current")
    _copy_series(images / "prior_and_current", new_study=True)
    for f in _copy_series(images / "mosaic"):
        ds = pydicom.dcmread(f)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.save_as(f, enforce_file_format=True)
    ids = ["good", "trunc_last", "header_cut", "prior_and_current", "mosaic"]
    _reports(tmp_path / "reports.csv", ids)
    (tmp_path / "p.yaml").write_text(CONFIG)
    out = tmp_path / "ds"
    code = cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(out),
                "--config", str(tmp_path / "p.yaml"), "--workers", "1"])
    assert code == 3
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["study_id"] for r in rows] == ["good"] and "Report of good" in rows[0]["report"]
    assert rows[0]["provenance"].startswith("series #")  # named by SeriesNumber as the viewer shows it, then its hash
    errors = {e["study_id"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert errors["trunc_last"] == f"trunc_last/{last.name}: truncated: 256 of 512 pixel bytes"
    assert errors["header_cut"].startswith(f"header_cut/{cut.name}: truncated or damaged DICOM")
    assert "2 different studies (StudyInstanceUIDs) in one study folder" in errors["prior_and_current"]
    assert "Siemens mosaic" in errors["mosaic"] and "dcm2niix" in errors["mosaic"]


def test_studies_of_one_patient_share_a_split_and_the_id_is_never_written(tmp_path):
    images = tmp_path / "images"
    patients = {"MRN-778812": ["a1", "a2", "a3"], "MRN-550071": ["b1", "b2", "b3"], "MRN-912345": ["c1", "c2", "c3"]}
    for pid, studies in patients.items():
        for sid in studies:
            _copy_series(images / sid, patient_id=pid, new_study=True)
    _reports(tmp_path / "reports.csv", [s for v in patients.values() for s in v])
    (tmp_path / "p.yaml").write_text(CONFIG + "val_fraction: 0.4\ntest_fraction: 0.3\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(out),
                "--config", str(tmp_path / "p.yaml"), "--workers", "1"]) == 0
    split = {r["study_id"]: r["split"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    for pid, studies in patients.items():
        assert {split[s] for s in studies} == {assign_split("patient:" + pid, 0.4, 0.3)}
    # the study-id hash alone would have split some patient (the test would prove nothing otherwise)
    assert any(len({assign_split(s, 0.4, 0.3) for s in studies}) > 1 for studies in patients.values())
    for f in out.rglob("*"):
        if f.is_file() and f.suffix != ".npy":
            assert b"MRN-" not in f.read_bytes(), f


def test_without_config_hospital_data_gets_a_real_preset_and_is_told(tmp_path, capsys):
    images = tmp_path / "images"
    _copy_series(images / "s1")
    _reports(tmp_path / "reports.csv", ["s1", "s_missing"])
    cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(tmp_path / "ds"), "--workers", "1"])
    out = capsys.readouterr().out
    assert "no --config given: preset chest_ct" in out
    assert "prep (preset chest_ct):" in out and "1 reports without images" in out


@pytest.mark.parametrize("phantom_preset", ["demo_ct_5mm"])
def test_the_phantom_keeps_the_demo_preset(phantom_ct, tmp_path, capsys, phantom_preset):
    images = tmp_path / "images"
    first = sorted((phantom_ct / "images").iterdir())[0]
    shutil.copytree(first, images / first.name)
    cli(["prep", "--images", str(images), "--reports", str(phantom_ct / "reports.csv"), "--out", str(tmp_path / "ds"), "--workers", "1"])
    assert f"no --config given: preset {phantom_preset} (medalign's phantom)" in capsys.readouterr().out


def test_a_dataset_prepared_otherwise_than_the_model_is_refused(trained_run, prepared_ct, tmp_path, capsys):
    import yaml

    other = tmp_path / "other"
    shutil.copytree(prepared_ct, other)
    cfg = yaml.safe_load((other / "prep_config.yaml").read_text())
    spacing = next(s for s in cfg["steps"] if "spacing" in s)
    spacing["spacing"]["pixdim"] = [1.5, 1.5, 3.0]  # as if prepared with chest_ct's grid
    (other / "prep_config.yaml").write_text(yaml.safe_dump(cfg))
    for command in (["zeroshot", "--checkpoint", str(trained_run), "--data", str(other), "--out", str(tmp_path / "zs")],
                    ["index", "--checkpoint", str(trained_run), "--data", str(other), "--out", str(tmp_path / "idx")],
                    ["embed", "--checkpoint", str(trained_run), "--data", str(other), "--out", str(tmp_path / "emb")]):
        assert cli(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "prepared otherwise than the model" in err[0] and "pixdim" in err[0], err
    assert cli(["zeroshot", "--checkpoint", str(trained_run), "--data", str(prepared_ct), "--out", str(tmp_path / "ok")]) == 0


def _second_reconstruction(folder, offset: int = 300) -> None:
    """Another series of the study in ``folder`` (a new SeriesInstanceUID, as a second kernel is),
    its pixels shifted so that the two volumes can be told apart."""
    from pydicom.uid import generate_uid

    series_uid = generate_uid()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 6, "LUNG KERNEL"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = (ds.pixel_array.astype("int32") + offset).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(folder / (f.name + "_lung"), enforce_file_format=True)


def test_series_select_all_keeps_each_reconstruction_and_evaluation_averages_them(trained_run, tmp_path):
    import numpy as np
    import torch

    from medalign.prep.manifest import read_manifest
    from medalign.models.inference import embed_studies
    from medalign.tasks.model_io import load_model

    images = tmp_path / "images"
    _copy_series(images / "two_kernels", new_study=True)
    _second_reconstruction(images / "two_kernels")
    _copy_series(images / "one_kernel", new_study=True)
    _reports(tmp_path / "reports.csv", ["two_kernels", "one_kernel"])
    (tmp_path / "all.yaml").write_text(CONFIG.replace("min_slices: 3}", "min_slices: 3, select: all}"))
    (tmp_path / "best.yaml").write_text(CONFIG)
    for preset in ("all", "best"):
        assert cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(tmp_path / preset),
                    "--config", str(tmp_path / f"{preset}.yaml"), "--workers", "1"]) == 0
    best = pq.read_table(tmp_path / "best" / "manifest.parquet").to_pylist()
    assert [r["study_id"] for r in best] == ["one_kernel", "two_kernels"]
    rows = pq.read_table(tmp_path / "all" / "manifest.parquet").to_pylist()
    two = [r for r in rows if r["study_id"] == "two_kernels"]
    assert len(rows) == 3 and len(two) == 2
    assert two[0]["report"] == two[1]["report"] and two[0]["split"] == two[1]["split"]  # one report, one split
    assert len({r["volume"] for r in two}) == 2 and len({r["series"] for r in two}) == 2 and all(r["series"] for r in two)
    means = sorted(float(np.load(tmp_path / "all" / r["volume"]).astype(float).mean()) for r in two)
    assert means[1] > means[0]  # the two kernels' pixels, not one volume twice
    # a rerun resumes: nothing is prepared again, nothing lost
    assert cli(["prep", "--images", str(images), "--reports", str(tmp_path / "reports.csv"), "--out", str(tmp_path / "all"),
                "--config", str(tmp_path / "all.yaml"), "--workers", "1"]) == 0
    assert len(pq.read_table(tmp_path / "all" / "manifest.parquet")) == 3
    # evaluation sees a study once, its volumes' embeddings averaged
    manifest = read_manifest(tmp_path / "all")
    studies = manifest.studies()
    assert studies.columns["study_id"] == ["one_kernel", "two_kernels"]
    model, _ = load_model(trained_run, "cpu")
    per_volume = torch.from_numpy(embed_studies(model, manifest))
    per_study = embed_studies(model, studies)
    expected = torch.nn.functional.normalize(per_volume[[1, 2]].mean(0), dim=0).numpy()
    assert per_study.shape[0] == 2 and np.allclose(per_study[1], expected, atol=1e-5)
    assert np.allclose(per_study[0], per_volume[0].numpy(), atol=1e-6)
    # finetune scores a study once too: the sigmoid of its volumes' mean logit (float64 reference)
    from medalign.data.dataset import StudyDataset
    from medalign.models.image import ImageEncoder
    from medalign.tasks.finetune import FindingClassifier, predict_studies

    cfg = model.config.image
    encoder = ImageEncoder(cfg.name, model.config.embed_dim, cfg.options, cfg.activation_checkpointing)
    encoder.load_state_dict(model.image.state_dict())
    classifier = FindingClassifier(encoder, 3).eval()
    probs = predict_studies(classifier, manifest, torch.device("cpu"))
    volumes = StudyDataset(manifest)
    with torch.no_grad():
        logits = np.stack([classifier(volumes[i]["image"][None])[0].double().numpy() for i in range(3)])
    expected = 1 / (1 + np.exp(-np.stack([logits[0], logits[[1, 2]].mean(0)])))
    assert probs.shape == (2, 3) and np.allclose(probs, expected, atol=1e-5)
    assert not np.allclose(logits[1], logits[2], atol=1e-4)  # two kernels, two different answers averaged


def test_a_raw_study_is_scored_on_every_volume_the_preset_takes(trained_run, phantom_ct, tmp_path):
    """``zeroshot --study`` with a model prepared under ``series.select: all`` averages the study's
    reconstructions, as evaluation does, and names them, rather than picking one without a word."""
    import yaml

    from medalign.tasks.zeroshot_run import zeroshot_study

    study = tmp_path / "study"
    source = next(f for f in sorted((phantom_ct / "images").iterdir()) if all(p.is_file() for p in f.iterdir()))
    shutil.copytree(source, study)
    _second_reconstruction(study)
    model = tmp_path / "model"
    shutil.copytree(trained_run / "model", model)
    cfg = yaml.safe_load((model / "prep_config.yaml").read_text())
    cfg["series"]["select"] = "all"
    (model / "prep_config.yaml").write_text(yaml.safe_dump(cfg))
    both = zeroshot_study(model, study, device="cpu")
    best = zeroshot_study(trained_run / "model", study, device="cpu")
    assert len(both["volumes"]) == 2 and len(best["volumes"]) == 1
    assert "1 of 2" in both["volumes"][0] and "2 of 2" in both["volumes"][1]
    assert both["probabilities"] != best["probabilities"]  # the second reconstruction counts
