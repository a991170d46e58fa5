"""Encoders from the registry, and the dual encoder's export round trip (safetensors only)."""

from __future__ import annotations

import pytest
import torch

from medalign.errors import ConfigError, InputError
from medalign.models import DualEncoder, ModelConfig, create_image_encoder
from medalign.models.config import ImageModelConfig


@pytest.mark.parametrize(
    "name, options, size",
    [
        ("resnet10_3d", {"widen_factor": 0.25}, 32),
        ("resnet10_3d", {"widen_factor": 0.25, "pooling": "avgmax"}, 32),
        ("densenet121_3d", {}, 32),
        ("swin_3d", {"feature_size": 12}, 64),
        ("vit_3d", {"img_size": [32, 32, 32], "hidden_size": 48, "num_layers": 1, "num_heads": 2, "mlp_dim": 64}, 32),
    ],
)
def test_image_encoder_shapes(name, options, size):
    enc = create_image_encoder(name, 32, **options)
    out = enc(torch.randn(2, 1, size, size, size))
    assert out.shape == (2, 32)
    out.sum().backward()
    assert all(p.grad is not None for p in enc.proj.parameters())


def test_unknown_encoder_and_option():
    with pytest.raises(ConfigError, match="unknown image encoder"):
        create_image_encoder("resnet7_3d")
    with pytest.raises(ConfigError, match="unknown option 'width'"):
        create_image_encoder("resnet10_3d", 8, width=3)


def test_dual_encoder_round_trip(tmp_path):
    cfg = ModelConfig(embed_dim=16, image=ImageModelConfig("resnet10_3d", {"widen_factor": 0.25}))
    torch.manual_seed(0)
    model = DualEncoder(cfg).eval()
    x = torch.rand(2, 1, 24, 24, 16)
    texts = ["No pleural effusion.", "Cardiomegaly."]
    with torch.no_grad():
        img, txt = model.encode_image(x), model.encode_text(texts)
    assert torch.allclose(img.norm(dim=1), torch.ones(2), atol=1e-5)
    model.save_pretrained(tmp_path / "m")
    assert not list((tmp_path / "m").rglob("*.bin")) and not list((tmp_path / "m").rglob("*.pt"))
    loaded = DualEncoder.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x), img, atol=1e-6)
        assert torch.allclose(loaded.encode_text(texts), txt, atol=1e-6)
    assert loaded.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_truncated_weights_are_a_clear_error(tmp_path):
    cfg = ModelConfig(embed_dim=8, image=ImageModelConfig("resnet10_3d", {"widen_factor": 0.25}))
    DualEncoder(cfg).save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(InputError, match="model.safetensors"):
        DualEncoder.from_pretrained(tmp_path / "m")


def test_text_model_must_be_local():
    from medalign.models.text import resolve_text_model

    with pytest.raises(ConfigError, match="never downloads"):
        resolve_text_model("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract")


def test_prompt_ensemble_is_the_mean_of_its_prompts(tmp_path):
    import numpy as np

    from medalign.reports.vocabulary import load_vocabulary
    from medalign.tasks.zeroshot import finding_probabilities

    cfg = ModelConfig(embed_dim=16, image=ImageModelConfig("resnet10_3d", {"widen_factor": 0.25}))
    torch.manual_seed(1)
    model = DualEncoder(cfg).eval()
    p = tmp_path / "v.yaml"
    p.write_text(
        "findings:\n"
        "  - name: effusion\n    prompts: {positive: [Pleural effusion., There is pleural fluid.], negative: No pleural effusion.}\n"
        "  - name: single\n    prompts: {positive: Pleural effusion., negative: No pleural effusion.}\n"
    )
    vocab = load_vocabulary(p)
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=1).numpy()
    probs = finding_probabilities(model, emb, vocab)
    with torch.no_grad():
        t = model.encode_text(["Pleural effusion.", "There is pleural fluid.", "No pleural effusion."])
        pos = torch.nn.functional.normalize(t[:2].mean(0), dim=0)
        s = model.scale()
        ref = torch.softmax(torch.stack([s * torch.from_numpy(emb) @ pos, s * torch.from_numpy(emb) @ t[2]], -1), -1)[:, 0]
        single = torch.softmax(torch.stack([s * torch.from_numpy(emb) @ t[0], s * torch.from_numpy(emb) @ t[2]], -1), -1)[:, 0]
    np.testing.assert_allclose(probs[:, 0], ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(probs[:, 1], single.numpy(), atol=1e-5)


@pytest.mark.parametrize("loss", ["cwcl", "soft_labels"])
def test_training_step_with_a_frozen_text_tower(loss):
    """A frozen tower on whole reports is never run during training: its cached embeddings stand in."""
    import warnings

    from medalign.train.config import LossConfig, PretrainConfig
    from medalign.train.module import PretrainModule
    from medalign.train.report_cache import embed_reports

    cfg = ModelConfig(embed_dim=8, image=ImageModelConfig("resnet10_3d", {"widen_factor": 0.25}))
    cfg.text.trainable_layers = 0
    torch.manual_seed(0)
    model = DualEncoder(cfg)
    texts = ["No pleural effusion.", "Cardiomegaly.", "Large right pleural effusion.", "Emphysema."]
    module = PretrainModule(model, PretrainConfig(model=cfg, loss=LossConfig(name=loss, mix=0.5, with_similarity=True)), report_texts=texts)
    module.report_embeddings = embed_reports(model.text, texts)
    batch = {"image": torch.rand(4, 1, 24, 24, 16), "index": torch.tensor([2, 0, 3, 1]),
             "labels": torch.tensor([[0, 0], [0, 1], [1, 0], [0, 0]], dtype=torch.float32)}
    calls = []
    model.text.model.register_forward_hook(lambda *a: calls.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss_value = module.training_step(batch, 0)
    loss_value.backward()
    assert torch.isfinite(loss_value) and calls == []  # no transformer pass per step
    assert all(p.grad is None for p in model.text.model.parameters())
    assert model.image.proj.weight.grad.abs().sum() > 0 and model.text.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name, options, size",
    [
        ("resnet10_3d", {"widen_factor": 0.25}, 32),
        ("densenet121_3d", {}, 32),
        ("swin_3d", {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}, 64),
        ("vit_3d", {"img_size": [32, 32, 32], "hidden_size": 48, "num_layers": 2, "num_heads": 2, "mlp_dim": 64}, 32),
    ],
)
def test_activation_checkpointing_gives_the_same_gradients(name, options, size):
    x = torch.randn(2, 1, size, size, size)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        enc = create_image_encoder(name, 16, activation_checkpointing=checkpointing, **options).eval()  # eval: BN statistics fixed
        enc.train()
        for m in enc.modules():  # keep BN/dropout deterministic while the rest trains
            if isinstance(m, (torch.nn.BatchNorm3d, torch.nn.Dropout)):
                m.eval()
        from medalign.models.image import IMAGE_ENCODERS

        inner = next(m for m in IMAGE_ENCODERS[name].stages(enc.backbone)[0].modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)))
        calls = []
        inner.register_forward_hook(lambda *a: calls.append(1))
        enc(x).square().sum().backward()
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward pass
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 4
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)


def test_grad_checkpointing_keeps_names_and_can_be_switched_off():
    plain = create_image_encoder("resnet10_3d", 16, widen_factor=0.25)
    enc = create_image_encoder("resnet10_3d", 16, activation_checkpointing=True, widen_factor=0.25)
    assert list(enc.state_dict()) == list(plain.state_dict())  # no wrapper in the names: checkpoints load either way
    assert enc.forward.__func__ is type(enc).forward  # no forward replaced
    calls = []
    enc.backbone.layer1[0].conv1.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 1, 32, 32, 32)  # two: BatchNorm in training needs more than one value a channel
    enc(x).sum().backward()
    assert len(calls) == 2
    enc.set_grad_checkpointing(False)
    calls.clear()
    enc(x).sum().backward()
    assert len(calls) == 1
    enc.set_grad_checkpointing(True)
    calls.clear()
    enc(x).sum().backward()
    assert len(calls) == 2


def test_an_option_the_encoder_does_not_take_is_refused():
    from medalign.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option 'depth' for resnet18_3d"):
        create_image_encoder("resnet18_3d", 16, depth=50)


def test_vit_fused_attention_computes_monai_attention():
    """vit_3d's default fused attention (scaled_dot_product_attention) against MONAI's own einsum
    attention, float64: the same output and the same gradients, weights shared."""
    opts = {"img_size": [32, 32, 16], "patch_size": [8, 8, 8], "hidden_size": 48, "num_layers": 2, "num_heads": 4, "mlp_dim": 64}
    torch.manual_seed(0)
    fused = create_image_encoder("vit_3d", 16, **opts).double()
    einsum = create_image_encoder("vit_3d", 16, fused_attention=False, **opts).double()
    einsum.load_state_dict(fused.state_dict())
    assert all(b.attn.use_flash_attention for b in fused.backbone.vit.blocks)
    assert not any(b.attn.use_flash_attention for b in einsum.backbone.vit.blocks)
    x = torch.randn(2, 1, 32, 32, 16, dtype=torch.float64)
    out_f, out_e = fused(x), einsum(x)
    torch.testing.assert_close(out_f, out_e, rtol=1e-10, atol=1e-10)
    out_f.square().sum().backward()
    out_e.square().sum().backward()
    grads_e = dict(einsum.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads_e[name].grad, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("size", [(16, 12, 10), (15, 9, 7), (8, 8, 8)])
def test_space_to_depth_stem_is_the_strided_convolution(size):
    """The GPU stem against PyTorch's own strided convolution (float64, even and odd sizes):
    the same output, and the same gradients for the input and the weight."""
    from medalign.models.image import space_to_depth_conv3d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, *size, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(5, 1, 7, 7, 7, dtype=torch.float64, generator=g, requires_grad=True)
    ours = space_to_depth_conv3d(x, w)
    ref = torch.nn.functional.conv3d(x, w, stride=2, padding=3)
    assert ours.shape == ref.shape == (2, 5, *((n + 1) // 2 for n in size))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    up = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    gx, gw = torch.autograd.grad((ours * up).sum(), (x, w))
    rx, rw = torch.autograd.grad((ref * up).sum(), (x, w))
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-12, atol=1e-12)


def test_resnet_stem_keeps_its_weight_name_and_monai_output():
    """The stem swap changes no checkpoint key and no output (CPU runs MONAI's convolution)."""
    from monai.networks.nets import resnet18

    from medalign.models.image import PhaseStemConv3d

    enc = create_image_encoder("resnet18_3d", 8)
    assert isinstance(enc.backbone.conv1, PhaseStemConv3d)
    monai_keys = set(resnet18(spatial_dims=3, n_input_channels=1, feed_forward=False, conv1_t_stride=2).state_dict())
    assert set(enc.backbone.state_dict()) == monai_keys
