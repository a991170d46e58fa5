"""``medalign index`` and ``medalign retrieve``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medalign.config import read_yaml
from medalign.data.dataset import as_unit_array
from medalign.data.manifest import read_manifest
from medalign.errors import InputError
from medalign.io.atomic import atomic_write_json
from medalign.models.inference import embed_studies, embed_texts
from medalign.tasks.model_io import load_model
from medalign.tasks.montage import draw_montage, write_html
from medalign.tasks.raw_study import prepare_raw_study
from medalign.tasks.retrieval import StudyIndex, build_index, update_index


def index_dataset(checkpoint: Path, dataset: Path, out: Path, device: str = "auto", split: str = "all", approximate: str = "auto",
                  update: bool = False) -> tuple[int, int]:
    """Embed the studies and reports of ``dataset`` (one split or all) into index folder ``out``.

    ``update``: add only the studies the existing index at ``out`` lacks (same model required).
    Returns (studies embedded now, studies in the index).
    """
    model, model_dir = load_model(checkpoint, device, dataset)
    manifest = read_manifest(dataset).subset(None if split == "all" else split)
    existing = None
    if update and (Path(out) / "index.json").is_file():
        existing = StudyIndex(out)
        existing.check_model(model_dir)
        known = set(existing.ids)
        manifest = manifest.subset_rows(i for i, sid in enumerate(manifest.columns["study_id"]) if sid not in known)
        if len(manifest) == 0:
            return 0, len(known)
    elif len(manifest) == 0:
        raise InputError(f"{dataset}: no studies to index in split '{split}'")
    study_emb = embed_studies(model, manifest)
    report_emb = embed_texts(model, [r or "" for r in manifest.columns["report"]])
    c = manifest.columns
    meta = [
        {"study_id": c["study_id"][i], "split": c["split"][i], "volume": c["volume"][i], "impression": c["impression"][i] or c["findings"][i] or ""}
        for i in range(len(manifest))
    ]
    if existing is not None:
        return len(manifest), update_index(out, model_dir, dataset, study_emb, report_emb, meta)
    build_index(out, model_dir, dataset, study_emb, report_emb, meta, approximate)
    return len(manifest), len(manifest)


@torch.no_grad()
def retrieve(index: Path, out: Path, study: Path | None = None, text: str | None = None, k: int = 5, device: str = "auto", target: str = "studies",
             html: bool = False, ef_search: int | None = None, modality: str | None = None) -> list[dict]:
    """Top-``k`` studies (or reports) for a raw study or a text; writes results.json and montage.png
    (and ``results.html``, a self-contained page, with ``html``). ``modality`` confirms a NIfTI query
    is of the model's modality (a NIfTI file says none)."""
    if k < 1:
        raise InputError(f"--k {k}: must be at least 1")
    idx = StudyIndex(index, ef_search)
    model, model_dir = load_model(Path(idx.info["model"]), device)
    idx.check_model(model_dir)
    query_volume = None
    exclude = None
    if text is not None:
        if not text.strip():
            raise InputError("--text: empty query")
        query = embed_texts(model, [text])[0]
    else:
        query_volume = prepare_raw_study(study, model_dir, modality)
        image = torch.from_numpy(query_volume)[None, None].to(model.logit_scale.device)
        query = model.encode_image(image).float().cpu().numpy()[0]
        exclude = Path(study).name.split(".nii")[0]  # the query itself, when it is in the index
    hits = [h for h in idx.search(query, k + 1, target) if h["study_id"] != exclude][:k]
    for r, h in enumerate(hits, 1):
        h["rank"] = r
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", hits)
    dataset = Path(idx.info["dataset"])
    by_id = {m["study_id"]: m for m in idx.meta}
    volumes = [as_unit_array(np.load(dataset / by_id[h["study_id"]]["volume"], mmap_mode="r")) for h in hits]
    prep_cfg = model_dir / "prep_config.yaml"
    modality = read_yaml(prep_cfg).get("modality", "ct") if prep_cfg.is_file() else "ct"
    title = f"Query study {Path(study).name}" if study is not None else ""
    draw_montage(text if text is not None else query_volume, title, hits, volumes, out / "montage.png", modality)
    if html:
        write_html(text if text is not None else query_volume, title, hits, volumes, out / "results.html", modality)
    return hits
