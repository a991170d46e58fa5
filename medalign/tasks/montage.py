"""Pictures for people: mid-slices in three planes for a query and its hits, with impressions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from medalign.io.atomic import atomic_write


def mid_slices(volume: np.ndarray, point: tuple[int, int, int] | None = None) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of an RAS ``(X, Y, Z[, 3])`` volume through ``point`` (default:
    the middle), oriented for display (axial: anterior up, patient right on the left; coronal and
    sagittal: superior up)."""
    x, y, z = point if point is not None else tuple(s // 2 for s in volume.shape[:3])
    axial = np.swapaxes(volume[::-1, :, z], 0, 1)[::-1]  # rows anterior -> posterior, columns patient right -> left
    coronal = np.swapaxes(volume[::-1, y, :], 0, 1)[::-1]  # rows superior -> inferior, columns right -> left
    sagittal = np.swapaxes(volume[x, ::-1, :], 0, 1)[::-1]  # rows superior -> inferior, columns anterior -> posterior
    return [axial, coronal, sagittal]


def overlay_slices(volume: np.ndarray, relevance: np.ndarray) -> list[np.ndarray]:
    """:func:`mid_slices` through the maximum of ``relevance`` (same grid as ``volume``), as RGB images:
    the map in the inferno colour map over the grey ``[0, 1]`` image."""
    from matplotlib import colormaps

    peak = np.unravel_index(int(np.argmax(relevance)), relevance.shape)
    grey = np.repeat(np.clip(volume, 0.0, 1.0)[..., None], 3, axis=-1)
    rgb = 0.55 * grey + 0.45 * colormaps["inferno"](np.clip(relevance, 0.0, 1.0))[..., :3]
    return mid_slices(rgb, peak)


PLANE_NAMES = {"ct": ("axial", "coronal", "sagittal"), "oct": ("B-scan", "en face", "slow-axis section")}


def draw_montage(query: np.ndarray | str, query_title: str, hits: list[dict], volumes: list[np.ndarray], path: Path, modality: str = "ct",
                 maps: dict | None = None) -> None:
    """One row per panel: the query (volume or text) then each hit with rank, id, score, impression.

    ``maps`` (from ``retrieve --explain``): ``{"hits": [map per hit], "query": [map per hit] or None}``,
    each on its volume's grid; a hit's row then shows the hit through its map's maximum with the map
    over it and, for a study query, the query through the maximum of its map for that hit."""
    planes = PLANE_NAMES.get(modality, PLANE_NAMES["ct"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 1 + len(hits)
    pictures = 6 if maps is not None and maps.get("query") is not None else 3
    fig, axes = plt.subplots(rows, pictures + 1, figsize=(12 if pictures == 3 else 20, 2.6 * rows),
                             gridspec_kw={"width_ratios": [1] * pictures + [1.6]})
    axes = np.atleast_2d(axes)

    def show(row: int, slices: list[np.ndarray], captions: list[str], title: str, text: str) -> None:
        for c in range(pictures):
            ax = axes[row, c]
            ax.axis("off")
            if c < len(slices):
                ax.imshow(slices[c], cmap="gray", vmin=0, vmax=1, aspect="auto")
                ax.set_title(captions[c], fontsize=8)
        ax = axes[row, pictures]
        ax.axis("off")
        ax.text(0, 1, title, fontsize=9, fontweight="bold", va="top", transform=ax.transAxes)
        ax.text(0, 0.8, "\n".join(textwrap.wrap(text, 60)[:8]), fontsize=8, va="top", transform=ax.transAxes)

    if isinstance(query, str):
        show(0, [], [], "Query (text)", query)
    else:
        show(0, mid_slices(query), list(planes), query_title, "")
    for r, (hit, vol) in enumerate(zip(hits, volumes), start=1):
        title = f"#{hit['rank']}  {hit['study_id']}  score {hit['score']:.3f}"
        if maps is None:
            show(r, mid_slices(vol), list(planes), title, hit.get("impression") or "")
            continue
        slices = overlay_slices(vol, maps["hits"][r - 1])
        captions = [f"hit {p}" for p in planes]
        if maps.get("query") is not None:
            slices += overlay_slices(query, maps["query"][r - 1])
            captions += [f"query {p}" for p in planes]
        show(r, slices, captions, title, (hit.get("impression") or "") + "\n\n(colour: the regions that make query and hit similar)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)


def png_bytes(image: np.ndarray) -> bytes:
    """A grey-scale ``[0, 1]`` image (or an RGB one, kept) as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, format="png")  # an RGB image keeps its colours
    return buf.getvalue()


def _png_data_uri(image: np.ndarray) -> str:
    """A grey-scale ``[0, 1]`` image as an inline ``data:image/png;base64`` URI."""
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def write_html(query: np.ndarray | str, query_title: str, hits: list[dict], volumes: list[np.ndarray], path: Path, modality: str = "ct",
               maps: dict | None = None) -> None:
    """One self-contained page (images inlined, no script, no external file): the query and each
    hit with rank, id, score, impression and three mid-slices; with ``maps`` (see :func:`draw_montage`)
    each hit's slices go through its map's maximum with the map over them, and the query's beside them."""
    import html

    planes = PLANE_NAMES.get(modality, PLANE_NAMES["ct"])

    def figures(vol: np.ndarray, relevance: np.ndarray | None = None, who: str = "") -> str:
        slices = mid_slices(vol) if relevance is None else overlay_slices(vol, relevance)
        return "".join(
            f'<figure><img alt="{who}{name}" src="{_png_data_uri(s)}"><figcaption>{who}{name}</figcaption></figure>'
            for name, s in zip(planes, slices)
        )

    if isinstance(query, str):
        head = f'<section class="query"><h2>Query</h2><p class="text">{html.escape(query)}</p></section>'
    else:
        head = f'<section class="query"><h2>{html.escape(query_title or "Query study")}</h2>{figures(query)}</section>'
    rows = []
    for n, (h, vol) in enumerate(zip(hits, volumes)):
        if maps is None:
            pictures = figures(vol)
        else:
            pictures = f'<div class="why">{figures(vol, maps["hits"][n], "hit ")}'
            if maps.get("query") is not None:
                pictures += figures(query, maps["query"][n], "query ")
            pictures += "<p>Colour: the regions that make query and hit similar.</p></div>"
        rows.append(
            f'<section class="hit"><h3>#{h["rank"]} {html.escape(str(h["study_id"]))} '
            f'<span class="score">score {h["score"]:.3f}</span></h3>{pictures}'
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
