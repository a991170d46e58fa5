"""The training step's math as open_clip does it: fp32 loss under bf16 autocast, weight decay only on
weight matrices, the logit scale clamped as a parameter, plain tensors into the model, a resume that
refuses another batch geometry, one default for loss.mix, presets that inherit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medalign.config import load_config
from medalign.data.sampler import ResumableSampler
from medalign.errors import ConfigError, InputError
from medalign.losses import create_loss
from medalign.train.config import LossConfig, PretrainConfig


@pytest.mark.parametrize("name", ["info_nce", "siglip", "soft_labels"])
def test_loss_under_bf16_autocast_is_the_fp32_loss(name):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(16, 32, generator=g), dim=1)
    txt = F.normalize(img + 0.3 * torch.randn(16, 32, generator=g), dim=1)
    labels = (torch.rand(16, 5, generator=g) < 0.3).float()
    scale, bias = torch.tensor(100.0), torch.tensor(-10.0)
    objective = create_loss(name)
    ref = objective(img, txt, scale, bias, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = objective(img, txt, scale, bias, labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_one_default_for_the_label_mix():
    assert create_loss("soft_labels").mix == LossConfig().mix


def _demo_model():
    from medalign.models import DualEncoder

    config = load_config(PretrainConfig, "demo_ct", "pretrain")
    return DualEncoder(config.model), config


def test_weight_decay_only_on_weight_matrices():
    from medalign.train.module import parameter_groups

    model, config = _demo_model()
    config.optim.weight_decay = 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = set(), set()
    for params, lr, wd in parameter_groups(model, config.optim):
        (decay if wd > 0 else no_decay).update(names[id(p)] for p in params)
    assert "logit_scale" in no_decay
    assert all(model.get_parameter(n).ndim >= 2 for n in decay)
    assert any(n.endswith(".bias") for n in no_decay) and any("norm" in n.lower() or ".bn" in n for n in no_decay)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_logit_scale_is_clamped_in_place_with_a_live_gradient():
    model, config = _demo_model()
    cap = math.log(config.model.max_logit_scale)
    with torch.no_grad():
        model.logit_scale.fill_(cap)
    model.scale().backward()
    assert model.logit_scale.grad.item() == pytest.approx(config.model.max_logit_scale)  # d exp(x)/dx: not zero at the cap
    with torch.no_grad():
        model.logit_scale.fill_(cap + 0.7)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(cap)


def test_training_items_are_plain_tensors(prepared_ct):
    """MONAI's augmentation returns MetaTensors; the dataset hands the model plain tensors."""
    from medalign.data.augment import build_augmentation
    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest

    manifest = read_manifest(prepared_ct)
    shape = np.load(manifest.volume_path(0), mmap_mode="r").shape
    ds = StudyDataset(manifest, augment=build_augmentation([0], 0.05, 0.9, shape))
    item = ds[(0, 3)]
    assert type(item["image"]) is torch.Tensor


def test_resume_refuses_another_batch_size():
    saved = ResumableSampler(100, batch_size=8, seed=1)
    state = saved.state_dict()
    assert state["batch_size"] == 8 and state["world_size"] == 1
    with pytest.raises(InputError, match="batch size 8 on 1 process.*batch size 4 on 1"):
        ResumableSampler(100, batch_size=4, seed=1).load_state_dict(state)
    with pytest.raises(InputError, match="batch size 8 on 2 process"):
        ResumableSampler(100, batch_size=8, seed=1).load_state_dict({**state, "world_size": 2})
    ResumableSampler(100, batch_size=8, seed=1).load_state_dict(state)  # the same geometry resumes


def test_presets_inherit_with_base(tmp_path):
    chest = load_config(PretrainConfig, "chest_ct", "pretrain")
    assert load_config(PretrainConfig, "abdomen_ct", "pretrain") == chest
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: chest_ct\noptim: {lr: 0.0001}\n")
    got = load_config(PretrainConfig, mine, "pretrain")
    assert got.optim.lr == 0.0001 and got.optim.text_lr == chest.optim.text_lr and got.model == chest.model
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="base"):
        load_config(PretrainConfig, loop, "pretrain")
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: chest_ct\noptim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'optim.lrr'"):
        load_config(PretrainConfig, bad, "pretrain")
