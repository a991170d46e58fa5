"""``medalign embed``: study and report embeddings of a dataset, computed once per (model, dataset).

EMB/
    embeddings.safetensors   "study" (N, D) and "report" (N, D) float32 unit vectors, manifest order;
                             metadata: model and dataset fingerprints
    studies.json             study ids and splits, same order
A rerun with the same model and dataset returns the cached files without computing anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medalign.io.atomic import atomic_write, atomic_write_json
from medalign.io.fingerprint import file_sha256
from medalign.models.dual import export_fingerprint
from medalign.models.inference import embed_studies, embed_texts
from medalign.prep.manifest import MANIFEST, read_manifest
from medalign.tasks.model_io import load_model, resolve_export

EMBEDDINGS = "embeddings.safetensors"


def _fingerprints(model_dir: Path, dataset: Path) -> dict[str, str]:
    return {"model": export_fingerprint(model_dir), "dataset": file_sha256(Path(dataset) / MANIFEST)}


def embed_dataset(checkpoint: Path, dataset: Path, out: Path, device: str = "auto") -> tuple[Path, bool]:
    """Embed every study and report of ``dataset``; returns (``out``, whether it was computed now)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(out)
    model_dir = resolve_export(checkpoint)
    prints = _fingerprints(model_dir, dataset)
    if (out / EMBEDDINGS).is_file():
        with safe_open(str(out / EMBEDDINGS), framework="pt") as f:
            if (f.metadata() or {}) == prints:
                return out, False
    model, _ = load_model(checkpoint, device, dataset)
    manifest = read_manifest(dataset).studies()  # one embedding per study (its volumes averaged)
    study = torch.from_numpy(embed_studies(model, manifest, progress="embed"))
    report = torch.from_numpy(embed_texts(model, [r or "" for r in manifest.columns["report"]]))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "studies.json", {"study_id": manifest.columns["study_id"], "split": manifest.columns["split"]})
    atomic_write(out / EMBEDDINGS, lambda p: save_file({"study": study.contiguous(), "report": report.contiguous()}, str(p), metadata=prints))
    return out, True


def load_embeddings(folder: Path) -> dict:
    """``{"study": (N, D), "report": (N, D), "study_id": [...], "split": [...]}`` from an ``embed`` folder."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    arrays = load_file(str(folder / EMBEDDINGS))
    meta = json.loads((folder / "studies.json").read_text(encoding="utf-8"))
    return {"study": np.asarray(arrays["study"]), "report": np.asarray(arrays["report"]), **meta}
