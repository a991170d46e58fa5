"""``prep --shard I/N`` on many machines and ``prep --merge``: which shard prepares a study, and the
join of the shards' manifests and errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medalign.errors import InputError
from medalign.io.atomic import atomic_write, atomic_write_text_lines
from medalign.prep.manifest import MANIFEST


def shard_of(study_id: str, n: int) -> int:
    """Which of ``n`` shards prepares ``study_id``: a hash, so every machine agrees without a shared listing."""
    return int(hashlib.sha256(b"shard:" + study_id.encode("utf-8")).hexdigest()[:12], 16) % n


def merge_shards(out: Path) -> tuple[int, int]:
    """Join ``manifest.shard-*-of-N.parquet`` and ``errors.shard-*.jsonl`` into ``manifest.parquet`` and
    ``errors.jsonl``; every shard of N must be present. Returns (rows, errors)."""
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    found = {}
    for p in out.glob("manifest.shard-*-of-*.parquet"):
        m = re.fullmatch(r"manifest\.shard-(\d+)-of-(\d+)\.parquet", p.name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = p
    if not found:
        raise InputError(f"{out}: no shard manifests (manifest.shard-I-of-N.parquet) to merge")
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise InputError(f"{out}: shard manifests from different shard counts {sorted(counts)}")
    n = counts.pop()
    missing = [i for i in range(n) if (i, n) not in found]
    if missing:
        raise InputError(f"{out}: shard {missing[0]} of {n} has not finished (no manifest.shard-{missing[0]}-of-{n}.parquet)")
    table = pa.concat_tables([pq.read_table(found[(i, n)]) for i in range(n)])
    table = table.sort_by("study_id")
    atomic_write(out / MANIFEST, lambda tmp: pq.write_table(table, tmp))
    done = set(table.column("study_id").to_pylist())
    errors = []
    for i in range(n):
        path = out / f"errors.shard-{i}-of-{n}.jsonl"
        if path.is_file():
            errors += [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["study_id"] not in done]
    atomic_write_text_lines(out / "errors.jsonl", errors)
    return table.num_rows, len(errors)
