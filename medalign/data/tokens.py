"""The training reports tokenised once per run and memory-mapped: a batch's text side is a lookup.

FOLDER/tokens-<key>/ids.npy      every report's token ids, one after another (int32)
FOLDER/tokens-<key>/offsets.npy  report ``i`` is ``ids[offsets[i]:offsets[i + 1]]`` (int64, N + 1)

``key`` hashes the reports, the tokenizer and the maximum length, so a changed report set or text
model never reads a stale cache. The ids are exactly what the tokenizer gives one report (special
tokens added, truncated to the maximum length); :func:`pad_token_ids` pads a batch of them the way
the tokenizer pads (same pad id and side), so the model sees the same tensors either way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

#: tokenises a list of texts to one id list each (special tokens added, truncated, not padded)
TokenizeIds = Callable[[list[str]], list[list[int]]]


def token_cache_key(texts: Sequence[str], tokenizer_name: str, max_length: int) -> str:
    """A short hash that identifies ``texts`` tokenised by ``tokenizer_name`` at ``max_length``."""
    h = hashlib.sha256(f"{tokenizer_name}\0{max_length}".encode())
    for t in texts:
        h.update(b"\0" + t.encode("utf-8", "replace"))
    return h.hexdigest()[:24]


class ReportTokens:
    """Read access to a token cache folder; the arrays are memory-mapped lazily in each process
    (data-loader workers open their own maps instead of receiving a pickled copy)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._ids: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "_ids": None, "_offsets": None}

    def _open(self) -> None:
        self._ids = np.load(self.folder / "ids.npy", mmap_mode="r")
        self._offsets = np.load(self.folder / "offsets.npy")

    def __len__(self) -> int:
        if self._offsets is None:
            self._open()
        return len(self._offsets) - 1

    def ids(self, i: int) -> np.ndarray:
        """Report ``i``'s token ids ``(L_i,)``."""
        if self._ids is None:
            self._open()
        return np.asarray(self._ids[self._offsets[i] : self._offsets[i + 1]])


def build_token_cache(folder: Path, texts: Sequence[str], tokenize_ids: TokenizeIds, tokenizer_name: str, max_length: int,
                      chunk: int = 4096) -> ReportTokens:
    """Tokenise ``texts`` once into ``FOLDER/tokens-<key>`` (reused when it exists), written atomically."""
    target = Path(folder) / f"tokens-{token_cache_key(texts, tokenizer_name, max_length)}"
    if (target / "offsets.npy").is_file() and (target / "ids.npy").is_file():
        return ReportTokens(target)
    pieces: list[np.ndarray] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), chunk):
        for j, ids in enumerate(tokenize_ids(list(texts[start : start + chunk]))):
            pieces.append(np.asarray(ids, dtype=np.int32))
            lengths[start + j] = len(ids)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "ids.npy", np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32))
    np.save(tmp / "offsets.npy", offsets)
    try:
        tmp.rename(target)  # whole folder or nothing
    except OSError:
        if not (target / "offsets.npy").is_file():  # another rank finished first: its copy is identical
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportTokens(target)


def pad_token_ids(sequences: Sequence[np.ndarray], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad id sequences into ``{"input_ids": (B, L), "attention_mask": (B, L)}`` (int64), ``L`` the longest."""
    longest = max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        cols = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        input_ids[row, cols] = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        mask[row, cols] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
