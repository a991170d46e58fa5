"""Strict configuration: presets, overrides, unknown keys and wrong types."""

from __future__ import annotations

import pytest

from medalign.config import apply_overrides, load_config
from medalign.errors import ConfigError
from medalign.prep.config import PrepConfig
from medalign.reports.vocabulary import load_vocabulary
from medalign.train.config import PretrainConfig


@pytest.mark.parametrize("name", ["demo_ct", "demo_ct_5mm", "demo_oct", "chest_ct", "abdomen_ct", "oct"])
def test_prep_presets_load(name):
    cfg = load_config(PrepConfig, name, "prep")
    assert cfg.steps


@pytest.mark.parametrize("name", ["demo_ct", "demo_ct_5mm", "demo_oct", "chest_ct", "abdomen_ct", "oct"])
def test_pretrain_presets_load(name):
    assert load_config(PretrainConfig, name, "pretrain").trainer.max_steps > 0


def test_overrides_apply_and_are_checked():
    cfg = load_config(PretrainConfig, "demo_ct", "pretrain", ["optim.lr=0.5", "loss.name=info_nce", "data.flip_axes=[0, 1]"])
    assert cfg.optim.lr == 0.5 and cfg.loss.name == "info_nce" and cfg.data.flip_axes == [0, 1]
    with pytest.raises(ConfigError, match=r"^command line: optim.lrr=0.5: unknown key 'optim.lrr' \(optim allows: lr, "):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["optim.lrr=0.5"])
    with pytest.raises(ConfigError, match="^command line: optim.lr=fast: expected a number, got 'fast'$"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["loss.name=triplet"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nonsense"])


@pytest.mark.parametrize("written, lr", [("3e-4", 3e-4), ("1e-3", 1e-3), ("5E-5", 5e-5), ("'3e-4'", 3e-4), ("0.0003", 3e-4), ("3", 3.0)])
def test_numbers_as_people_write_them(tmp_path, written, lr):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; medalign's files and overrides take it as the number."""
    p = tmp_path / "mine.yaml"
    p.write_text(f"base: demo_ct\noptim:\n  lr: {written}\ntrainer:\n  max_steps: 1_000\n")
    cfg = load_config(PretrainConfig, p, "pretrain")
    assert cfg.optim.lr == lr and isinstance(cfg.optim.lr, float) and cfg.trainer.max_steps == 1000
    cfg = load_config(PretrainConfig, "demo_ct", "pretrain", [f"optim.lr={written}", "trainer.max_steps=2e3", "trainer.checkpoint_every=1_000"])
    assert cfg.optim.lr == lr and cfg.trainer.max_steps == 2000 and cfg.trainer.checkpoint_every == 1000
    assert isinstance(cfg.trainer.max_steps, int)


def test_numbers_are_still_checked():
    with pytest.raises(ConfigError, match=r"^command line: trainer.max_steps=2.5: expected an integer, got 2.5$"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["trainer.max_steps=2.5"])
    with pytest.raises(ConfigError, match="expected a number, got '1e-3x'"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["optim.lr=1e-3x"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["trainer.deterministic=1"])


def test_errors_name_the_file_that_set_the_key(tmp_path):
    """Not 'demo_ct.yaml.optim.lr': the file that set the key (through 'base:') or the override, then the key."""
    base = tmp_path / "base.yaml"
    base.write_text("base: demo_ct\noptim:\n  warmup_steps: soon\n")
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"base: {base}\noptim:\n  lr: 1e-3\n")
    with pytest.raises(ConfigError, match=rf"^{base}: optim.warmup_steps: expected an integer, got 'soon'$"):
        load_config(PretrainConfig, mine, "pretrain")
    base.write_text("base: demo_ct\n")
    with pytest.raises(ConfigError, match=r"^command line: data.batch_size=1: contrastive training needs at least 2$"):
        load_config(PretrainConfig, mine, "pretrain", ["data.batch_size=1"])
    mine.write_text(f"base: {base}\ntrainer: {{max_steps: 0}}\n")
    with pytest.raises(ConfigError, match=rf"^{mine}: trainer.max_steps: must be >= 1$"):
        load_config(PretrainConfig, mine, "pretrain")


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("modality: ct\nstepz: []\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'stepz'"):
        load_config(PrepConfig, p, "prep")


def test_unknown_transform_option(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("steps:\n  - spacing: {pixdim: [1, 1, 1], modee: nearest}\n")
    cfg = load_config(PrepConfig, p, "prep")
    from medalign.prep.transforms import build_preprocessing

    with pytest.raises(ConfigError, match="unknown option 'modee'"):
        build_preprocessing(cfg.steps)


def test_missing_preset_lists_known():
    with pytest.raises(ConfigError, match="demo_ct"):
        load_config(PrepConfig, "no_such_preset", "prep")


def test_vocabulary_duplicate_is_refused(tmp_path):
    p = tmp_path / "v.yaml"
    p.write_text("findings:\n  - {name: nodule}\n  - {name: Nodule}\n")
    with pytest.raises(ConfigError, match="duplicate finding 'nodule'"):
        load_vocabulary(p)


def test_ct_vocabulary_has_ct_rate_labels():
    assert len(load_vocabulary("chest_ct").names) == 18


def _finetune_args(tmp_path, *extra):
    from medalign.cli.main import build_parser

    for name in ("run", "data"):
        (tmp_path / name).mkdir(exist_ok=True)
    return build_parser().parse_args(["finetune", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
                                      "--out", str(tmp_path / "out"), *extra])


def test_finetune_preset_overrides_and_flags(tmp_path):
    """The preset's values, then key=value overrides, then the flags: each wins over the one before."""
    from medalign.cli.commands import _finetune_config
    from medalign.train.config import FinetuneConfig

    assert _finetune_config(_finetune_args(tmp_path)) == load_config(FinetuneConfig, "default", "finetune") == FinetuneConfig()
    cfg = _finetune_config(_finetune_args(tmp_path, "--epochs", "2", "--device", "cpu", "weight_decay=0.05", "epochs=9",
                                          "augment.flip_axes=[0, 1]"))
    assert (cfg.epochs, cfg.weight_decay, cfg.augment.flip_axes, cfg.trainer.accelerator, cfg.lr) == (2, 0.05, [0, 1], "cpu", 3e-4)
    child = tmp_path / "short.yaml"
    child.write_text("base: default\nepochs: 1\naugment: {intensity: 0.0}\n")
    cfg = _finetune_config(_finetune_args(tmp_path, "--config", str(child)))
    assert (cfg.epochs, cfg.augment.intensity, cfg.augment.crop_scale, cfg.batch_size) == (1, 0.0, 0.9, 16)
    with pytest.raises(ConfigError, match=r"^command line: weight_decy=0.1: unknown key 'weight_decy'"):
        _finetune_config(_finetune_args(tmp_path, "weight_decy=0.1"))
    with pytest.raises(ConfigError, match=r"^command line: augment.crop_scale=0.2: must lie in \[0.5, 1\], got 0.2$"):
        _finetune_config(_finetune_args(tmp_path, "augment.crop_scale=0.2"))


def test_device_resolver_refuses_a_missing_gpu(monkeypatch):
    from medalign import devices

    monkeypatch.setattr(devices, "_cuda_available", lambda: False)
    assert devices.resolve_accelerator("auto") == "cpu" and str(devices.resolve_device("auto")) == "cpu"
    with pytest.raises(ConfigError, match=r"^trainer.accelerator gpu: no CUDA device is available; use cpu \(or auto\)$"):
        devices.resolve_accelerator("gpu", "trainer.accelerator")
    with pytest.raises(ConfigError, match=r"^--device cuda:1: no CUDA device is available$"):
        devices.resolve_device("cuda:1")
    monkeypatch.setattr(devices, "_cuda_available", lambda: True)
    assert devices.resolve_accelerator("auto") == "gpu" and devices.resolve_accelerator("cuda") == "gpu"
