"""Report embeddings from the frozen, pretrained text tower: computed once per run, cached on disk.

They serve two uses: the CWCL similarity targets (``targets_from_similarity`` needs a *frozen*
encoder's view of the reports), and, when the text tower is frozen and whole reports are used,
the text side of training itself (no transformer pass per step).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from medalign.io.atomic import atomic_write


def texts_fingerprint(texts: list[str], model_name: str) -> str:
    """A hash of the reports and the text model that identifies a valid cache."""
    h = hashlib.sha256(model_name.encode())
    for t in texts:
        h.update(b"\0" + t.encode("utf-8", "replace"))
    return h.hexdigest()


@torch.no_grad()
def embed_reports(text_encoder, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Pooled hidden states ``(N, H)`` of ``texts`` (before the projection), float32, in eval mode.

    Under data parallelism each rank embeds every ``world``-th report and the parts are gathered,
    so the cost is split across ranks.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = next(text_encoder.parameters()).device
    was_training = text_encoder.training
    text_encoder.eval()
    mine = list(range(rank, len(texts), world))
    parts = []
    for i in range(0, len(mine), batch_size):
        tokens = text_encoder.tokenize([texts[j] for j in mine[i : i + batch_size]])
        parts.append(text_encoder.pooled(**{k: v.to(device) for k, v in tokens.items()}).float())
    hidden = text_encoder.model.config.hidden_size
    local = torch.cat(parts) if parts else torch.empty(0, hidden, device=device)
    text_encoder.train(was_training)
    if world == 1:
        return local
    rows = -(-len(texts) // world)  # every rank sends the same number of rows
    padded = torch.zeros(rows, hidden, device=device)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    out = torch.empty(len(texts), hidden, device=device)
    for r in range(world):
        n = len(range(r, len(texts), world))
        out[r::world] = gathered[r][:n]
    return out


def load_or_embed_reports(path: Path, text_encoder, texts: list[str], model_name: str, is_writer: bool) -> torch.Tensor:
    """The cached ``(N, H)`` embeddings at ``path`` when they match ``texts`` and the model; else
    compute them (and write the cache atomically from the writing rank)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    key = texts_fingerprint(texts, model_name)
    if Path(path).is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint") == key:
                    return f.get_tensor("embeddings")
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
            pass
    emb = embed_reports(text_encoder, texts)
    if is_writer:
        cpu = emb.detach().cpu().contiguous()
        atomic_write(Path(path), lambda p: save_file({"embeddings": cpu}, str(p), metadata={"fingerprint": key}))
    return emb
