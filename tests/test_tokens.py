"""The token cache: whole reports tokenised once give the model the same tensors as tokenising per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medalign.data.tokens import build_token_cache
from medalign.models.text import TextEncoder, resolve_text_model
from medalign.train.module import make_collate

REPORTS = [
    "FINDINGS: Small right pleural effusion. No pneumothorax. IMPRESSION: Effusion.",
    "",
    "Emphysème centrolobulaire — 3 mm nodule, unchanged; no consolidation.",
    " ".join(["Multiple bilateral pulmonary nodules, the largest 12 mm in the right upper lobe."] * 20),  # beyond max_length
    "Cardiomegaly.",
]


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(resolve_text_model("builtin:all-minilm-l6-v2"), 8, max_length=48).eval()


def _items(texts, whole=None):
    return [{"image": torch.zeros(1, 2, 2, 2), "labels": torch.zeros(3), "index": i, "text": t,
             "text_is_report": True if whole is None else whole[i]} for i, t in enumerate(texts)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_cached_tokens_equal_per_batch_tokenisation(text_encoder, tmp_path, side):
    tok = text_encoder.tokenizer
    tok.padding_side = side
    try:
        cache = build_token_cache(tmp_path, REPORTS, text_encoder.token_ids, "minilm", text_encoder.max_length)
        cached = make_collate(tok, text_encoder.max_length, cache)(_items(REPORTS))["tokens"]
        per_batch = make_collate(tok, text_encoder.max_length)(_items(REPORTS))["tokens"]
    finally:
        tok.padding_side = "right"
    assert cached["input_ids"].shape[1] == text_encoder.max_length  # the long report was truncated the same way
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(cached[key], per_batch[key]), key
    with torch.no_grad():  # and the tower's output (token_type_ids default to zeros, as the tokenizer's are)
        assert torch.allclose(text_encoder.pooled(**cached), text_encoder.pooled(**per_batch), atol=1e-6)


def test_sentence_samples_are_tokenised_in_the_batch(text_encoder, tmp_path):
    cache = build_token_cache(tmp_path, REPORTS, text_encoder.token_ids, "minilm", text_encoder.max_length)
    texts = list(REPORTS)
    texts[0] = "No pneumothorax. Small right pleural effusion."  # a sentence sample: not the cached report
    whole = [False, True, True, True, True]
    got = make_collate(text_encoder.tokenizer, text_encoder.max_length, cache)(_items(texts, whole))["tokens"]
    want = text_encoder.tokenize(texts)
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["attention_mask"], want["attention_mask"])


def test_cache_is_reused_and_keyed_by_reports_and_length(text_encoder, tmp_path):
    a = build_token_cache(tmp_path, REPORTS, text_encoder.token_ids, "minilm", 48)
    stamp = (a.folder / "ids.npy").stat().st_mtime_ns
    calls = []
    b = build_token_cache(tmp_path, REPORTS, lambda t: calls.append(t) or text_encoder.token_ids(t), "minilm", 48)
    assert b.folder == a.folder and not calls and (b.folder / "ids.npy").stat().st_mtime_ns == stamp
    assert build_token_cache(tmp_path, REPORTS, text_encoder.token_ids, "minilm", 16).folder != a.folder
    assert build_token_cache(tmp_path, REPORTS[:-1] + ["Other."], text_encoder.token_ids, "minilm", 48).folder != a.folder
    assert len(a) == len(REPORTS) and np.array_equal(a.ids(4), np.array(text_encoder.token_ids(["Cardiomegaly."])[0]))
    assert not list(tmp_path.glob(".*tmp"))  # no half-written folder left behind
