"""Each registry picks up a new entry without edits elsewhere: a toy reader (in-process and as another
package's entry point) reaches ``convert``, ``prep``, the default-preset choice and ``--help``; a toy
preprocessing step reaches ``prep``; a toy loss and a toy encoder reach ``pretrain`` and its export; a
vocabulary file reaches ``label``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from torch import nn

from medalign import config as config_module
from medalign.cli.main import build_parser
from medalign.cli.main import main as cli
from medalign.data.dataset import as_unit_array
from medalign.errors import InputError
from medalign.io import readers
from medalign.io.volume import Volume
from medalign.losses import registry as losses
from medalign.losses.base import ContrastiveLoss
from medalign.models import image as encoders
from medalign.prep import steps
from medalign.prep.presets import default_prep_preset

TOY_SPACING = (2.0, 3.0, 4.0)


def _toy_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-100, 100, (12, 10, 8)).astype(np.float32)


def _write_toy(path: Path, seed: int) -> np.ndarray:
    array = _toy_array(seed)
    with open(path, "wb") as f:  # a file object: np.save adds no .npy to the name
        np.save(f, array)
    return array


def _read_toy(path: Path, name: str) -> list[Volume]:
    return [Volume(array=np.load(path), affine=np.diag([*TOY_SPACING, 1.0]), source="toy", modality="OCT", laterality="OD")]


class _Fill:
    """A toy dictionary transform: every voxel set to ``value``."""

    def __init__(self, keys, value: float = 0.0) -> None:
        self.keys, self.value = keys, value

    def __call__(self, data: dict) -> dict:
        return {**data, **{k: data[k] * 0 + self.value for k in self.keys}}


@pytest.fixture
def toy_step():
    steps.register_step("toy_fill", lambda: _Fill, {"value": 0.25})
    yield
    del steps._STEPS["toy_fill"]


@pytest.fixture
def toy_reader():
    """``.toyvol`` registered for the test's duration, the registry as it was afterwards."""
    readers.register_reader("toy", suffixes=(".toyvol",), description="toy volume", modality="OCT")(_read_toy)
    yield readers.get_reader("toy")
    del readers._READERS["toy"]


def test_registered_reader_and_step_reach_convert_prep_preset_and_help(toy_reader, toy_step, tmp_path, capsys):
    assert "toy" in readers.list_readers() and ".toyvol" in readers.suffix_list()
    assert ".toyvol" in build_parser().format_help()
    images = tmp_path / "images"
    images.mkdir()
    arrays = {f"s{k}": _write_toy(images / f"s{k}.toyvol", k) for k in range(3)}
    (images / "notes.txt").write_text("not a study")

    assert cli(["convert", str(images / "s0.toyvol"), str(tmp_path / "s0.nii.gz")]) == 0
    assert "toy volume" in capsys.readouterr().out
    written = nib.load(str(tmp_path / "s0.nii.gz"))
    np.testing.assert_allclose(written.header.get_zooms()[:3], TOY_SPACING)
    np.testing.assert_allclose(np.asarray(written.dataobj, np.float32), arrays["s0"], atol=1e-4)

    assert default_prep_preset(images)[0] == "oct"  # the entry's modality decides
    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"study_id": s, "report": "Subretinal fluid."}) + "\n" for s in arrays))
    cfg = tmp_path / "p.yaml"
    cfg.write_text("modality: oct\nsteps:\n  - toy_fill: {value: 0.6}\n  - crop_or_pad: {spatial_size: [8, 8, 8]}\n")
    out = tmp_path / "ds"
    assert cli(["prep", "--images", str(images), "--reports", str(reports), "--out", str(out), "--config", str(cfg), "--workers", "1"]) == 0
    rows = {r["study_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert set(rows) == set(arrays)
    assert rows["s1"]["source_spacing"] == pytest.approx(list(TOY_SPACING))
    assert rows["s1"]["provenance"].startswith("toy volume")
    np.testing.assert_allclose(as_unit_array(np.load(out / rows["s1"]["volume"])), 0.6, atol=0.5 / 255)  # the step's value, cached


TOY_LOSS = 7.0


class _ConstantLoss(ContrastiveLoss):
    """A toy loss with a known value, touching every input so that the graph reaches both towers."""

    def compute(self, img, txt, img_all, txt_all, first, scale, bias, labels, frozen_text):
        return TOY_LOSS + 0.0 * (img.sum() + txt.sum() + scale + bias)


def _toy_backbone(width: int = 4) -> tuple[nn.Module, int]:
    net = nn.Sequential(nn.Conv3d(1, width, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
    return net, width


@pytest.fixture
def toy_loss_and_encoder():
    losses.register_loss("toy_constant", description="a constant", needs_bias=True)(_ConstantLoss)
    encoders.register_image_encoder("toy_conv", spatial_layer="1", stages=lambda net: [net[0]])(_toy_backbone)
    yield
    del losses._LOSSES["toy_constant"], encoders.IMAGE_ENCODERS["toy_conv"]


def test_registered_loss_and_encoder_reach_pretrain_and_export(toy_loss_and_encoder, prepared_ct, tmp_path):
    run = tmp_path / "run"
    assert cli(["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "2", "data.batch_size=4",
                "loss.name=toy_constant", "model.image.name=toy_conv", "model.image.options={width: 6}", "trainer.log_every_n_steps=1",
                "validation.every_n_steps=null"]) == 0
    logged = [float(r["train/loss"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("train/loss")]
    assert logged and all(v == TOY_LOSS for v in logged)
    saved = config_module.read_yaml(run / "config.yaml")
    assert saved["loss"]["name"] == "toy_constant" and saved["model"]["logit_bias"] is True  # the entry's need reached the model
    from safetensors.torch import load_file

    weights = load_file(run / "model" / "model.safetensors")
    assert weights["image.backbone.0.weight"].shape == (6, 1, 3, 3, 3) and "logit_bias" in weights


def test_unregistered_loss_is_refused_naming_the_registered_ones():
    from medalign.errors import ConfigError
    from medalign.train.config import PretrainConfig

    with pytest.raises(ConfigError, match=r"^command line: loss.name=triplet: 'triplet' is not one of cwcl, info_nce, siglip, soft_labels$"):
        config_module.load_config(PretrainConfig, "demo_ct", "pretrain", ["loss.name=triplet"])


def test_vocabulary_file_reaches_label(tmp_path, monkeypatch):
    root = tmp_path / "configs"
    shutil.copytree(config_module.CONFIG_ROOT, root)
    (root / "vocab" / "toy.yaml").write_text(
        "findings:\n  - name: hiatal hernia\n    synonyms: [hiatal hernia, hiatus hernia]\n"
        "    prompts: {positive: 'There is a hiatal hernia.', negative: 'No hiatal hernia.'}\n")
    monkeypatch.setattr(config_module, "CONFIG_ROOT", root)
    reports = tmp_path / "reports.csv"
    reports.write_text("study_id,report\na,Small hiatus hernia.\nb,No hiatal hernia.\nc,Normal chest.\n")
    assert cli(["label", "--reports", str(reports), "--out", str(tmp_path / "labels.csv"), "--vocab", "toy"]) == 0
    rows = {r["study_id"]: r["hiatal hernia"] for r in csv.DictReader(open(tmp_path / "labels.csv"))}
    assert rows == {"a": "1", "b": "0", "c": ""}


def test_reader_from_another_package_entry_point(tmp_path):
    """A package that declares a ``medalign.readers`` entry point is read in a fresh process."""
    site = tmp_path / "site"
    (site / "toy_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "toy_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (site / "toy_plugin-0.1.dist-info" / "entry_points.txt").write_text("[medalign.readers]\ntoy = toy_plugin\n")
    (site / "toy_plugin.py").write_text(
        "import numpy as np\nfrom medalign.io.readers import register_reader\nfrom medalign.io.volume import Volume\n\n"
        "@register_reader('toy', suffixes=('.toyvol',), description='toy volume')\n"
        "def read(path, name):\n    return [Volume(array=np.load(path), affine=np.diag([2.0, 3.0, 4.0, 1.0]))]\n")
    array = _write_toy(tmp_path / "a.toyvol", 5)
    env = {"PYTHONPATH": str(site), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "medalign.cli.main", "convert", str(tmp_path / "a.toyvol"), str(tmp_path / "a.nii")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.asarray(nib.load(str(tmp_path / "a.nii")).dataobj, np.float32), array, atol=1e-4)


def test_file_of_no_registered_format_is_refused_in_one_line(tmp_path):
    odd = tmp_path / "scan.xyz"
    odd.write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match=r"scan.xyz: not a file format medalign reads \(.e2e, .vol, .nii, .nii.gz, .fda, .fds, .img, or a DICOM series folder\)$"):
        readers.read_volumes(odd)
