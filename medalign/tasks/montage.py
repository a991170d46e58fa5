"""Pictures for people: mid-slices in three planes for a query and its hits, with impressions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from medalign.io.atomic import atomic_write


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal, sagittal mid-slices of an RAS ``(X, Y, Z)`` volume, oriented for display
    (axial: anterior up, patient right on the left; coronal and sagittal: superior up)."""
    x, y, z = (s // 2 for s in volume.shape)
    axial = volume[::-1, :, z].T[::-1]  # rows anterior -> posterior, columns patient right -> left
    coronal = volume[::-1, y, :].T[::-1]  # rows superior -> inferior, columns right -> left
    sagittal = volume[x, ::-1, :].T[::-1]  # rows superior -> inferior, columns anterior -> posterior
    return [axial, coronal, sagittal]


PLANE_NAMES = {"ct": ("axial", "coronal", "sagittal"), "oct": ("B-scan", "en face", "slow-axis section")}


def draw_montage(query: np.ndarray | str, query_title: str, hits: list[dict], volumes: list[np.ndarray], path: Path, modality: str = "ct") -> None:
    """One row per panel: the query (volume or text) then each hit with rank, id, score, impression."""
    planes = PLANE_NAMES.get(modality, PLANE_NAMES["ct"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 + len(hits)
    fig, axes = plt.subplots(rows, 4, figsize=(12, 2.6 * rows), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    axes = np.atleast_2d(axes)

    def show(row: int, vol: np.ndarray | None, title: str, text: str) -> None:
        for c in range(3):
            ax = axes[row, c]
            ax.axis("off")
            if vol is not None:
                ax.imshow(mid_slices(vol)[c], cmap="gray", vmin=0, vmax=1, aspect="auto")
                ax.set_title(planes[c], fontsize=8)
        ax = axes[row, 3]
        ax.axis("off")
        ax.text(0, 1, title, fontsize=9, fontweight="bold", va="top", transform=ax.transAxes)
        ax.text(0, 0.8, "\n".join(textwrap.wrap(text, 60)[:8]), fontsize=8, va="top", transform=ax.transAxes)

    if isinstance(query, str):
        show(0, None, "Query (text)", query)
    else:
        show(0, query, query_title, "")
    for r, (hit, vol) in enumerate(zip(hits, volumes), start=1):
        show(r, vol, f"#{hit['rank']}  {hit['study_id']}  score {hit['score']:.3f}", hit.get("impression") or "")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def _png_data_uri(image: np.ndarray) -> str:
    """A grey-scale ``[0, 1]`` image as an inline ``data:image/png;base64`` URI."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_html(query: np.ndarray | str, query_title: str, hits: list[dict], volumes: list[np.ndarray], path: Path, modality: str = "ct") -> None:
    """One self-contained page (images inlined, no script, no external file): the query and each
    hit with rank, id, score, impression and three mid-slices."""
    import html

    planes = PLANE_NAMES.get(modality, PLANE_NAMES["ct"])

    def figures(vol: np.ndarray) -> str:
        return "".join(
            f'<figure><img alt="{name}" src="{_png_data_uri(s)}"><figcaption>{name}</figcaption></figure>'
            for name, s in zip(planes, mid_slices(vol))
        )

    if isinstance(query, str):
        head = f'<section class="query"><h2>Query</h2><p class="text">{html.escape(query)}</p></section>'
    else:
        head = f'<section class="query"><h2>{html.escape(query_title or "Query study")}</h2>{figures(query)}</section>'
    rows = []
    for h, vol in zip(hits, volumes):
        rows.append(
            f'<section class="hit"><h3>#{h["rank"]} {html.escape(str(h["study_id"]))} '
            f'<span class="score">score {h["score"]:.3f}</span></h3>{figures(vol)}'
            f'<p class="impression">{html.escape(h.get("impression", ""))}</p></section>'
        )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>medalign retrieval</title>'
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1100px}section{border-top:1px solid #ccc;padding:.6em 0}"
        "figure{display:inline-block;margin:0 .6em 0 0}img{width:220px;image-rendering:pixelated;background:#000}"
        "figcaption{font-size:.8em;color:#555;text-align:center}.score{color:#555;font-weight:normal}</style></head><body>"
        f"<h1>Similar cases</h1>{head}{''.join(rows)}</body></html>"
    )
    atomic_write(path, lambda p: p.write_text(page, encoding="utf-8"))
