"""Content hashes of files (model weights, manifests) that tell caches and indexes what built them."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(*paths: Path) -> str:
    """sha256 over the bytes of ``paths`` in order, read 1 MiB at a time."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
