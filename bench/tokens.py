"""The text side of a training batch: the token cache (reports tokenised once, memory-mapped,
padded per batch) against tokenising every batch's reports with the fast tokenizer, side by side.

Reports: the hand-written chest-CT reports of ``tests/data/labeler_*.jsonl``, fifteen to a report (about 150 words), ``--reports`` of them,
``--batch`` per batch, the built-in MiniLM tokenizer at ``--max-length``, one thread (what one
loader worker has). Prints batches/s both ways and the ratio.

    .venv/bin/python bench/tokens.py [--reports 4096] [--batch 32] [--max-length 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    a = ap.parse_args()

    import torch

    from medalign.data.tokens import build_token_cache
    from medalign.models.text import TextEncoder, resolve_text_model
    import json
    from medalign.train.module import make_collate

    torch.set_num_threads(1)
    text = TextEncoder(resolve_text_model("builtin:all-minilm-l6-v2"), 8, max_length=a.max_length)
    data = Path(__file__).resolve().parent.parent / "tests" / "data"
    gold = [json.loads(line)["text"] for f in sorted(data.glob("labeler_*.jsonl")) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    # report-length texts (about 150 words): fifteen hand-written passages each
    reports = [" ".join(gold[j] for j in rng.choice(len(gold), 15, replace=False)) for _ in range(a.reports)]
    items = [{"image": torch.zeros(1, 1, 1, 1), "labels": torch.zeros(1), "index": i, "text": t, "text_is_report": True}
             for i, t in enumerate(reports)]
    batches = [items[i : i + a.batch] for i in range(0, len(items) - a.batch + 1, a.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = build_token_cache(Path(tmp), reports, text.token_ids, "minilm", a.max_length)
        build_s = time.perf_counter() - t0
        timings = {}
        for name, collate in (("tokenise per batch", make_collate(text.tokenizer, a.max_length)),
                              ("token cache", make_collate(text.tokenizer, a.max_length, cache))):
            collate(batches[0])  # warm-up (maps the cache)
            t0 = time.perf_counter()
            for b in batches:
                collate(b)
            timings[name] = len(batches) / (time.perf_counter() - t0)
        words = np.mean([len(r.split()) for r in reports])
        print(f"{a.reports} reports ({words:.0f} words on average), batch {a.batch}, max_length {a.max_length}, 1 thread")
        print(f"  building the cache: {build_s:.2f} s ({a.reports / build_s:.0f} reports/s, once per run)")
        for name, rate in timings.items():
            print(f"  {name:<20} {rate:8.0f} batches/s")
        print(f"  ratio (cache / per batch): {timings['token cache'] / timings['tokenise per batch']:.1f}x")


if __name__ == "__main__":
    main()
