"""Validation during training: each rank embeds its shard, in the training precision, and every
rank scores the gathered whole."""

from __future__ import annotations

import os

import torch
from conftest import run_gloo_ranks

from medalign.losses.distributed import gather_sharded_rows, shard_rows

N, WORLD = 7, 2  # an odd count: the ranks hold 4 and 3 rows


def _worker(rank: int, out: str) -> None:
    full = torch.arange(N * 3, dtype=torch.float32).view(N, 3)
    rows = shard_rows(N)
    gathered = gather_sharded_rows(full[list(rows)], N)
    torch.save({"rows": list(rows), "gathered": gathered}, os.path.join(out, f"rank{rank}.pt"))


def test_shards_are_gathered_back_in_row_order(tmp_path):
    run_gloo_ranks(_worker, tmp_path, WORLD)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert results[0]["rows"] == [0, 2, 4, 6] and results[1]["rows"] == [1, 3, 5]
    full = torch.arange(N * 3, dtype=torch.float32).view(N, 3)
    for r in results:
        assert torch.equal(r["gathered"], full)


def test_validation_runs_in_the_training_precision(trained_run, prepared_ct):
    from medalign.prep.manifest import read_manifest
    from medalign.reports.vocabulary import load_vocabulary
    from medalign.tasks.model_io import load_model
    from medalign.train.validation import ZeroShotValidation

    model, _ = load_model(trained_run, "cpu")
    val = read_manifest(prepared_ct).subset("val")
    check = ZeroShotValidation(val, load_vocabulary(prepared_ct / "vocab.yaml"), every_n_steps=1)
    seen: list[torch.dtype] = []
    handle = model.image.proj.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        full = check.evaluate(model, "32-true")
        assert set(seen) == {torch.float32}
        seen.clear()
        half = check.evaluate(model, "bf16-mixed")
        assert set(seen) == {torch.bfloat16}  # the image tower ran in bf16, as training does
    finally:
        handle.remove()
    assert abs(half["val/macro_auroc"] - full["val/macro_auroc"]) < 0.1
    assert 0.0 <= half["val/report_to_study_r5"] <= 1.0
