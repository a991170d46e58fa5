"""Two CPU processes (gloo, DDP) give the loss and every gradient of one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from conftest import run_gloo_ranks
from torch import nn

from medalign.losses import ContrastiveLoss, create_loss

GLOBAL_BATCH, WORLD = 8, 2
CASES = [("info_nce", False), ("siglip", False), ("soft_labels", False), ("soft_labels", True), ("cwcl", True)]
MODES = (False, True)  # local_loss off (every rank forms the global B x B logits) and on (its own b x B rows)


class TinyDualEncoder(nn.Module):
    """Two linear towers, a logit scale and a bias: enough parameters to see every gradient path."""

    def __init__(self, with_bias: bool) -> None:
        super().__init__()
        self.image = nn.Linear(16, 6)
        self.text = nn.Linear(12, 6)
        self.log_scale = nn.Parameter(torch.tensor(2.0))
        # only SigLIP has a bias: an unused parameter would keep DDP from reducing its bucket
        self.bias = nn.Parameter(torch.tensor(-1.0)) if with_bias else None

    def forward(self, x_img, x_txt):
        return F.normalize(self.image(x_img), dim=-1), F.normalize(self.text(x_txt), dim=-1), self.log_scale.exp(), self.bias


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0.5], [0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0.5], [1, 0, 0]], dtype=torch.float64)
    return {
        "x_img": torch.randn(GLOBAL_BATCH, 16, generator=g, dtype=torch.float64),
        "x_txt": torch.randn(GLOBAL_BATCH, 12, generator=g, dtype=torch.float64),
        "labels": labels,
        "frozen": torch.randn(GLOBAL_BATCH, 5, generator=g, dtype=torch.float64),
    }


def _loss_and_grads(model: nn.Module, objective: ContrastiveLoss, batch: dict, rows: slice, with_frozen: bool):
    img, txt, scale, bias = model(batch["x_img"][rows], batch["x_txt"][rows])
    loss = objective(img, txt, scale, bias, batch["labels"][rows], batch["frozen"][rows] if with_frozen else None)
    loss.backward()
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return loss.detach(), {n: p.grad.detach().clone() for n, p in inner.named_parameters()}


def _worker(rank: int, out: str) -> None:
    batch, local = _batch(), GLOBAL_BATCH // WORLD
    results = {}
    for local_loss, with_grad in [(m, True) for m in MODES] + [(False, False)]:
        for name, with_frozen in CASES:
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(TinyDualEncoder(name == "siglip").double())
            key = f"{name}:{with_frozen}:{local_loss}" + ("" if with_grad else ":nograd")
            results[key] = _loss_and_grads(
                model, create_loss(name, mix=0.6, local_loss=local_loss, gather_with_grad=with_grad), batch,
                slice(rank * local, (rank + 1) * local), with_frozen
            )
            del model  # no DDP reducer outlives the process group
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    run_gloo_ranks(_worker, out, WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("local_loss", MODES)
@pytest.mark.parametrize("name,with_frozen", CASES)
def test_two_ranks_equal_one_process(ranks, name, with_frozen, local_loss):
    torch.manual_seed(0)
    single = TinyDualEncoder(name == "siglip").double()
    loss, grads = _loss_and_grads(single, create_loss(name, mix=0.6), _batch(), slice(None), with_frozen)
    rank_losses = torch.stack([ranks[r][f"{name}:{with_frozen}:{local_loss}"][0] for r in range(WORLD)])
    if local_loss:  # each rank's loss is its rows' share: their mean is the global loss, and they differ
        assert torch.allclose(rank_losses.mean(), loss, rtol=1e-10, atol=0), (rank_losses, float(loss))
        assert float((rank_losses[0] - rank_losses[1]).abs()) > 1e-6
    for r in range(WORLD):
        r_loss, r_grads = ranks[r][f"{name}:{with_frozen}:{local_loss}"]
        if not local_loss:
            assert torch.allclose(r_loss, loss, rtol=1e-5, atol=0), (r, float(r_loss), float(loss))
        for n, g in grads.items():
            rel = (r_grads[n] - g).norm() / g.norm()
            assert rel < 1e-5, (name, r, n, float(rel))
    assert all(g.abs().max() > 0 for g in grads.values())  # every parameter moves: the check is not vacuous


@pytest.mark.parametrize("name,with_frozen", CASES)
def test_gathering_without_grad_gives_the_gradient_over_world_size(ranks, name, with_frozen):
    """open_clip's ``gather_with_grad=False``: other ranks' features are constants, so each rank's
    gradient reaches the towers through its own rows only, and DDP's average is the towers' exact
    gradient over W; the logit scale and bias, which every rank's whole loss reads, keep theirs."""
    torch.manual_seed(0)
    single = TinyDualEncoder(name == "siglip").double()
    loss, grads = _loss_and_grads(single, create_loss(name, mix=0.6), _batch(), slice(None), with_frozen)
    for r in range(WORLD):
        r_loss, r_grads = ranks[r][f"{name}:{with_frozen}:False:nograd"]
        assert torch.allclose(r_loss, loss, rtol=1e-5, atol=0)
        for n, g in grads.items():
            factor = 1 if n in ("log_scale", "bias") else WORLD
            rel = (factor * r_grads[n] - g).norm() / g.norm()
            assert rel < 1e-5, (name, r, n, float(rel))


def test_every_loss_is_a_module_of_its_own():
    from medalign.losses import CWCLLoss, InfoNCELoss, SigLIPLoss, SoftLabelLoss

    batch = _batch()
    img, txt = F.normalize(batch["x_img"][:, :6], dim=-1), F.normalize(batch["x_txt"][:, :6], dim=-1)
    scale = torch.tensor(10.0, dtype=torch.float64)
    for module, name, kwargs in ((InfoNCELoss(), "info_nce", {}), (SigLIPLoss(), "siglip", {"bias": torch.tensor(-1.0, dtype=torch.float64)}),
                                 (SoftLabelLoss(mix=0.6), "soft_labels", {"labels": batch["labels"]}),
                                 (CWCLLoss(mix=0.6), "cwcl", {"frozen_text": batch["frozen"]})):
        assert isinstance(module, nn.Module)
        expected = create_loss(name, mix=0.6)(img, txt, scale, **kwargs)
        assert torch.allclose(module(img, txt, scale, **kwargs), expected), name


def test_a_local_only_loss_differs(ranks):
    """The check has teeth: the loss of one rank's half alone is not the global loss."""
    torch.manual_seed(0)
    single = TinyDualEncoder(False).double()
    half, _ = _loss_and_grads(single, create_loss("info_nce"), _batch(), slice(0, GLOBAL_BATCH // WORLD), False)
    global_loss = ranks[0]["info_nce:False:False"][0]
    assert abs(float(half) - float(global_loss)) > 1e-3


def test_pretrain_runs_data_parallel_on_two_cpu_processes(prepared_ct, tmp_path):
    """``medalign pretrain`` with Lightning's DDP on 2 CPU ranks: one export, every step, the global
    batch split between the ranks (the sampler, not Lightning's DistributedSampler)."""
    import csv
    import subprocess
    import sys

    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "medalign.cli.main", "pretrain", "--data", str(prepared_ct), "--out", str(run), "--config", "demo_ct",
         "--max-steps", "3", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=4",
         "trainer.log_every_n_steps=1", "model.image.options.widen_factor=0.25", "validation.every_n_steps=2"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("model exported") == 1
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("train/loss")]
    assert steps == [0, 1, 2]
    # validation ran sharded over the two ranks (each embeds half the val split, the halves gathered)
    assert any(r.get("val/macro_auroc") for r in csv.DictReader(open(run / "logs" / "metrics.csv")))
    assert (run / "model" / "model.safetensors").is_file()
