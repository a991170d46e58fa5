"""``medalign index`` and ``medalign retrieve``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medalign.config import read_yaml
from medalign.data.dataset import as_unit_array
from medalign.errors import InputError
from medalign.io.atomic import atomic_write_json
from medalign.models.inference import embed_studies, embed_texts
from medalign.prep.manifest import read_manifest
from medalign.tasks.model_io import load_model
from medalign.tasks.montage import draw_montage, write_html
from medalign.tasks.ood import out_of_distribution
from medalign.tasks.raw_study import embed_raw_study, load_raw_study
from medalign.tasks.retrieval import StudyIndex, build_index, update_index


def index_dataset(checkpoint: Path, dataset: Path, out: Path, device: str = "auto", split: str = "all", approximate: str = "auto",
                  update: bool = False) -> tuple[int, int]:
    """Embed the studies and reports of ``dataset`` (one split or all) into index folder ``out``.

    ``update``: add only the studies the existing index at ``out`` lacks (same model required).
    Returns (studies embedded now, studies in the index).
    """
    model, model_dir = load_model(checkpoint, device, dataset)
    manifest = read_manifest(dataset).studies().subset(None if split == "all" else split)  # a study: its volumes averaged
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
    study_emb = embed_studies(model, manifest, progress="index")
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
             html: bool = False, ef_search: int | None = None, modality: str | None = None, explain: bool = False,
             explain_method: str = "auto") -> list[dict]:
    """Top-``k`` studies (or reports) for a raw study or a text; writes results.json and montage.png
    (and ``results.html``, a self-contained page, with ``html``); for a study, ``query.json`` says whether
    it is out of the training distribution (:mod:`medalign.tasks.ood`). ``modality`` confirms a NIfTI query
    is of the model's modality (a NIfTI file says none). ``explain``: for each hit, relevance maps of
    the hit's regions and (for a study query) the query's regions for their similarity score, shown
    in the montage and the page (:func:`~medalign.tasks.explain.relevance_maps`)."""
    if k < 1:
        raise InputError(f"--k {k}: must be at least 1")
    if explain and target != "studies":
        raise InputError("--explain shows the regions that make two studies similar: it needs --target studies")
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
        raw = load_raw_study(study, model_dir, modality)
        query_volume = raw.array  # shown, and explained; the query is every volume the preset takes, averaged
        query = embed_raw_study(model, raw)
        exclude = Path(study).name.split(".nii")[0]  # the query itself, when it is in the index
    hits = [h for h in idx.search(query, k + 1, target) if h["study_id"] != exclude][:k]
    for r, h in enumerate(hits, 1):
        h["rank"] = r
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if text is None:  # the query study beside its hits: is it like what the model was trained on?
        guard = out_of_distribution(model_dir, raw.source.affine, raw.source.array.shape, query)
        atomic_write_json(out / "query.json", {"study": Path(study).name, "out_of_distribution": guard["out_of_distribution"],
                                               "ood_reasons": guard["reasons"], "ood_checks": {k: guard[k] for k in ("field_of_view", "embedding")}})
    else:
        (out / "query.json").unlink(missing_ok=True)  # an earlier study query's verdict is not this text's
    atomic_write_json(out / "results.json", hits)
    dataset = Path(idx.info["dataset"])
    by_id = {m["study_id"]: m for m in idx.meta}
    volumes = [as_unit_array(np.load(dataset / by_id[h["study_id"]]["volume"], mmap_mode="r")) for h in hits]
    prep_cfg = model_dir / "prep_config.yaml"
    modality = read_yaml(prep_cfg).get("modality", "ct") if prep_cfg.is_file() else "ct"
    title = f"Query study {Path(study).name}" if study is not None else ""
    maps = None
    if explain and hits:
        row = {sid: i for i, sid in enumerate(idx.ids)}
        hit_emb = idx.studies[[row[h["study_id"]] for h in hits]]  # as indexed (a study's volumes averaged)
        maps = _similarity_maps(model, query, query_volume, volumes, hit_emb, explain_method)
        for h, q_map, h_map in zip(hits, maps["query"] or [None] * len(hits), maps["hits"]):
            h["explain"] = {"method": maps["method"], "hit_peak_voxel": [int(v) for v in np.unravel_index(int(np.argmax(h_map)), h_map.shape)]}
            if q_map is not None:
                h["explain"]["query_peak_voxel"] = [int(v) for v in np.unravel_index(int(np.argmax(q_map)), q_map.shape)]
        atomic_write_json(out / "results.json", hits)
    draw_montage(text if text is not None else query_volume, title, hits, volumes, out / "montage.png", modality, maps)
    if html:
        write_html(text if text is not None else query_volume, title, hits, volumes, out / "results.html", modality, maps)
    return hits


def _similarity_maps(model, query: np.ndarray, query_volume: np.ndarray | None, volumes: list[np.ndarray], hit_emb: np.ndarray,
                     method: str) -> dict:
    """``{"hits": [map], "query": [map] or None, "method"}``: per hit, the relevance of the hit's voxels
    to its similarity with the query embedding and (study query) of the query's voxels to its
    similarity with the hit's embedding; maps on each volume's model grid, in [0, 1]."""
    from medalign.tasks.explain import relevance_maps

    device = model.logit_scale.device
    hit_images = [torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[None, None].to(device) for v in volumes]
    hit_emb = torch.as_tensor(np.asarray(hit_emb, dtype=np.float32), device=device)
    query_emb = torch.as_tensor(query, device=device)[None].float()
    hit_maps, used = [], method
    for i, x in enumerate(hit_images):
        _, m, used = relevance_maps(model, x, query_emb, method, progress=f"explain hit {i + 1}/{len(hit_images)}")
        hit_maps.append(m[0].cpu().numpy())
    query_maps = None
    if query_volume is not None:
        image = torch.from_numpy(query_volume)[None, None].to(device)
        _, m, used = relevance_maps(model, image, hit_emb, method, progress="explain query")  # one pass, every hit
        query_maps = [q.cpu().numpy() for q in m]
    return {"hits": hit_maps, "query": query_maps, "method": used}
