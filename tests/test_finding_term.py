"""The study-level finding term (loss.findings): its formula against scikit-learn's log loss and a
float64 re-derivation, zero-shot's score as its sigmoid, gradients to the towers it should train,
the findings it leaves out, and a run that trains and exports with it."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medalign.cli.main import main as cli
from medalign.config import load_config
from medalign.errors import ConfigError
from medalign.losses.findings import finding_bce, prompt_logits
from medalign.train.config import PretrainConfig


def test_finding_bce_is_sklearns_log_loss_over_the_known_labels():
    from sklearn.metrics import log_loss

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(12, 4, generator=g, dtype=torch.float64)
    targets = (torch.rand(12, 4, generator=g) < 0.4).double()
    targets[2, 1] = targets[7, 3] = float("nan")  # uncertain under labels.uncertain=ignore
    known = ~torch.isnan(targets)
    p = torch.sigmoid(logits[known]).numpy()
    assert finding_bce(logits, targets).item() == pytest.approx(log_loss(targets[known].numpy(), p, labels=[0, 1]), rel=1e-6)
    # soft targets (uncertain as half): -[t log p + (1 - t) log(1 - p)], in float64 by hand
    soft = torch.full((3, 2), 0.5, dtype=torch.float64)
    x = torch.tensor([[0.3, -2.0], [4.0, 0.0], [-1.0, 1.5]], dtype=torch.float64)
    by_hand = np.mean([-(0.5 * np.log(1 / (1 + np.exp(-v))) + 0.5 * np.log(1 - 1 / (1 + np.exp(-v)))) for v in x.flatten().tolist()])
    assert finding_bce(x, soft).item() == pytest.approx(by_hand, rel=1e-9)


def test_finding_bce_with_no_known_label_is_zero_with_a_graph():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = finding_bce(logits, torch.full((3, 2), float("nan")))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 2))


def test_prompt_logit_is_zero_shots_score():
    """sigmoid(logit) equals zero-shot's softmax over the (positive, negative) pair."""
    from medalign.models import DualEncoder
    from medalign.models.inference import finding_probabilities
    from medalign.reports.vocabulary import load_vocabulary

    config = load_config(PretrainConfig, "demo_ct", "pretrain")
    model = DualEncoder(config.model).eval()
    vocab = load_vocabulary("chest_ct")
    img = F.normalize(torch.randn(5, config.model.embed_dim, generator=torch.Generator().manual_seed(1)), dim=1)
    pairs = [f.prompt_pair() for f in vocab.findings]
    with torch.no_grad():
        pos = F.normalize(torch.stack([model.encode_text(p.positives).mean(0) for p in pairs]), dim=1)
        neg = F.normalize(torch.stack([model.encode_text(p.negatives).mean(0) for p in pairs]), dim=1)
        ours = torch.sigmoid(prompt_logits(img, pos, neg, model.scale())).numpy()
    np.testing.assert_allclose(ours, finding_probabilities(model, img.numpy(), vocab), atol=1e-5)


def _module(via: str, columns: dict):
    from medalign.models import DualEncoder
    from medalign.train.module import PretrainModule

    config = load_config(PretrainConfig, "demo_ct", "pretrain")
    config.model.image.options = {"widen_factor": 0.25, "pooling": "avgmax"}
    config.loss.findings.weight, config.loss.findings.via = 1.0, via
    return PretrainModule(DualEncoder(config.model), config, finding_prompts=columns)


PROMPTS = {1: (["There is a pleural effusion."], ["No pleural effusion."]),
           3: (["A pulmonary nodule.", "There is a lung nodule."], ["No pulmonary nodules."])}


def test_prompts_term_trains_both_towers_and_head_term_leaves_the_text_to_the_contrast():
    img = F.normalize(torch.randn(4, 128, generator=torch.Generator().manual_seed(2)), dim=1).requires_grad_()
    for via in ("prompts", "head"):
        module = _module(via, PROMPTS)
        logits = module.finding_logits(img)
        assert logits.shape == (4, 2)
        finding_bce(logits, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])).backward()
        text_grads = [p.grad for p in module.model.text.parameters() if p.requires_grad]
        touched = any(g is not None and g.abs().sum() > 0 for g in text_grads)
        assert touched == (via == "prompts"), via
        assert img.grad.abs().sum() > 0
        img.grad = None
    head = _module("head", PROMPTS)
    names = {id(p) for g in head.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert all(id(p) in names for p in head.finding_head.parameters())  # the head is optimised too


def test_head_logit_is_on_the_contrasts_scale_and_leaves_the_temperature_alone():
    """``s * (W x + b)`` in float64, ``s = exp(logit_scale)`` at its initial 1 / 0.07, the form of the prompt logit."""
    head = _module("head", PROMPTS)
    img = F.normalize(torch.randn(5, 128, generator=torch.Generator().manual_seed(3)), dim=1)
    w, b = head.finding_head.weight.detach().double(), head.finding_head.bias.detach().double()
    expected = (1 / 0.07) * (img.double() @ w.T + b)
    logits = head.finding_logits(img)
    np.testing.assert_allclose(logits.detach().double().numpy(), expected.numpy(), rtol=1e-4)
    finding_bce(logits, torch.ones(5, 2)).backward()
    assert head.model.logit_scale.grad is None  # the temperature is the contrast's to learn


def test_training_step_adds_the_term_on_the_chosen_columns(prepared_ct):
    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest
    from medalign.train.module import make_collate

    module = _module("prompts", PROMPTS)
    train = read_manifest(prepared_ct).subset("train")
    ds = StudyDataset(train)
    batch = make_collate(module.model.text.tokenizer)([ds[i] for i in range(6)])
    module.eval()  # no dropout, BatchNorm's running statistics: every forward below is the same function
    with torch.no_grad():
        with_term = module.training_step(batch, 0)
        module.finding_weight = 0.0
        without = module.training_step(batch, 0)
        img = module.model.encode_image(batch["image"])
        expected = finding_bce(module.finding_logits(img), batch["labels"][:, [1, 3]])
    assert expected.item() > 0
    assert with_term.item() - without.item() == pytest.approx(expected.item(), rel=1e-4)


def test_both_adds_the_head_and_the_prompt_terms_and_trains_both_towers(prepared_ct):
    """``via: both``: the step adds BCE(head) + BCE(prompts), each against sklearn's log loss, and gradients
    reach the text tower (through the prompts) and the head."""
    from sklearn.metrics import log_loss

    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest
    from medalign.train.module import make_collate

    module = _module("both", PROMPTS)
    assert module.finding_head is not None and module._prompt_tokens is not None
    with pytest.raises(ValueError, match="name one"):
        module.finding_logits(torch.zeros(2, 128))
    ds = StudyDataset(read_manifest(prepared_ct).subset("train"))
    batch = make_collate(module.model.text.tokenizer)([ds[i] for i in range(6)])
    module.eval()
    with torch.no_grad():
        with_term = module.training_step(batch, 0)
        module.finding_weight = 0.0
        without = module.training_step(batch, 0)
        img = module.model.encode_image(batch["image"])
        y = batch["labels"][:, [1, 3]].double().numpy().ravel()
        expected = sum(log_loss(y, torch.sigmoid(module.finding_logits(img, form)).double().numpy().ravel(), labels=[0, 1])
                       for form in ("head", "prompts"))
    assert with_term.item() - without.item() == pytest.approx(expected, rel=1e-4)
    module.finding_weight = 1.0
    img = img.clone().requires_grad_()
    sum(finding_bce(module.finding_logits(img, form), torch.ones(6, 2)) for form in ("head", "prompts")).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.text.parameters())
    assert module.finding_head.weight.grad.abs().sum() > 0


def test_config_checks_the_term():
    with pytest.raises(ConfigError, match="loss.findings.weight"):
        config = PretrainConfig()
        config.loss.findings.weight = -1.0
        config.validate("x.yaml")
    from medalign.config import from_dict

    with pytest.raises(ConfigError, match="via"):
        from_dict(PretrainConfig, {"loss": {"findings": {"via": "attention"}}}, where="x.yaml")


def test_findings_without_enough_positives_stay_out(prepared_ct, capsys):
    from medalign.prep.manifest import read_manifest
    from medalign.train.pretrain import finding_prompts

    train = read_manifest(prepared_ct).subset("train")
    positives = (train.labels() == 1).sum(axis=0)
    chosen = finding_prompts(prepared_ct, train, 5)
    assert sorted(chosen) == [k for k in range(len(train.findings)) if positives[k] >= 5]
    nodule = train.findings.index("lung nodule")
    assert chosen[nodule][0] == ["There is a pulmonary nodule in the lung."]  # the vocabulary's own prompt
    assert finding_prompts(prepared_ct, train, int(positives.max()) + 1) is None
    assert "loss.findings is off" in capsys.readouterr().err


def test_a_run_with_the_term_logs_it_and_exports_the_dual_encoder_alone(prepared_ct, tmp_path):
    run = tmp_path / "run"
    code = cli(["pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct", "--max-steps", "4",
                "data.batch_size=8", "model.image.options.widen_factor=0.25", "optim.warmup_steps=1", "trainer.log_every_n_steps=1",
                "loss.findings.weight=1.0", "loss.findings.via=head", "loss.findings.min_positives=3"])
    assert code == 0
    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/finding_loss")]
    assert rows and all(np.isfinite(float(r["train/finding_loss"])) for r in rows)
    from medalign.models import DualEncoder

    DualEncoder.from_pretrained(run / "model")  # strict: no head weights in the export
