"""Strict configuration: presets, overrides, unknown keys and wrong types."""

from __future__ import annotations

import pytest

from medalign.config import apply_overrides, load_config
from medalign.errors import ConfigError
from medalign.prep.config import PrepConfig
from medalign.prep.vocab import load_vocabulary
from medalign.train.config import PretrainConfig


@pytest.mark.parametrize("name", ["demo_ct", "demo_oct", "chest_ct", "abdomen_ct", "oct"])
def test_prep_presets_load(name):
    cfg = load_config(PrepConfig, name, "prep")
    assert cfg.steps


@pytest.mark.parametrize("name", ["demo_ct", "demo_oct", "chest_ct", "abdomen_ct", "oct"])
def test_pretrain_presets_load(name):
    assert load_config(PretrainConfig, name, "pretrain").trainer.max_steps > 0


def test_overrides_apply_and_are_checked():
    cfg = load_config(PretrainConfig, "demo_ct", "pretrain", ["optim.lr=0.5", "loss.name=info_nce", "data.flip_axes=[0, 1]"])
    assert cfg.optim.lr == 0.5 and cfg.loss.name == "info_nce" and cfg.data.flip_axes == [0, 1]
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["optim.lrr=0.5"])
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(PretrainConfig, "demo_ct", "pretrain", ["loss.name=triplet"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nonsense"])


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
