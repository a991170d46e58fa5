"""Which on-disk layout for the training cache: ``.npy`` (memory-mapped) against Zarr, by measurement.

The same volumes (the demo dataset's, resampled to ``--shape``, e.g. the chest-CT preset's
240 x 240 x 120) are written as float16 ``.npy``, uint8 ``.npy`` (the window quantised to 256
levels), and Zarr v3 arrays (float16, 64^3 chunks, Blosc-zstd compression); for each: bytes on
disk, seconds to write, and volumes per second for a whole-volume read (what training does) and
for a random 96^3 crop (where chunking could help). The baseline is float16 ``.npy``, what
``medalign prep`` writes by default.

    .venv/bin/python bench/cache_format.py --data /tmp/demo_ct/dataset --studies 24 --shape 240 240 120
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else Path(path).stat().st_size


def _drop_page_cache(paths) -> None:
    """Best effort: read every file once so all formats are measured warm (the same footing)."""
    for p in paths:
        for f in (Path(p).rglob("*") if Path(p).is_dir() else [Path(p)]):
            if f.is_file():
                f.read_bytes()


def main() -> None:
    import zarr
    from scipy.ndimage import zoom

    from medalign.prep.manifest import read_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 120])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    manifest = read_manifest(a.data)
    vols = []
    for i in range(min(a.studies, len(manifest))):
        v = np.load(manifest.volume_path(i)).astype(np.float32)
        vols.append(np.clip(zoom(v, [t / s for t, s in zip(a.shape, v.shape)], order=1), 0, 1))
    rng = np.random.default_rng(0)
    crop = 96
    corners = [tuple(int(rng.integers(0, s - crop + 1)) for s in a.shape) for _ in range(a.repeats * len(vols))]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        formats = {
            "npy float16 (medalign default)": (lambda i, v: np.save(tmp / f"f16_{i}.npy", v.astype(np.float16)), lambda i: tmp / f"f16_{i}.npy", "npy"),
            "npy uint8 (256-level window)": (lambda i, v: np.save(tmp / f"u8_{i}.npy", np.round(v * 255).astype(np.uint8)), lambda i: tmp / f"u8_{i}.npy", "npy"),
            "zarr float16, 64^3 chunks, zstd": (
                lambda i, v: zarr.create_array(store=str(tmp / f"z_{i}.zarr"), data=v.astype(np.float16), chunks=(64, 64, 64),
                                               compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")),
                lambda i: tmp / f"z_{i}.zarr", "zarr"),
        }
        for name, (write, path, kind) in formats.items():
            t = time.perf_counter()
            for i, v in enumerate(vols):
                write(i, v)
            t_write = time.perf_counter() - t
            paths = [path(i) for i in range(len(vols))]
            size = sum(_dir_bytes(p) for p in paths)
            _drop_page_cache(paths)
            opener = (lambda p: np.load(p, mmap_mode="r")) if kind == "npy" else (lambda p: zarr.open_array(str(p), mode="r"))
            t = time.perf_counter()
            for _ in range(a.repeats):
                for p in paths:
                    np.asarray(opener(p)[:], dtype=np.float32)
            t_full = (time.perf_counter() - t) / (a.repeats * len(paths))
            t = time.perf_counter()
            for k, (x, y, z) in enumerate(corners):
                np.asarray(opener(paths[k % len(paths)])[x : x + crop, y : y + crop, z : z + crop], dtype=np.float32)
            t_crop = (time.perf_counter() - t) / len(corners)
            results[name] = (size / len(vols) / 2**20, t_write / len(vols), 1 / t_full, 1 / t_crop)
    print(f"{len(vols)} volumes {tuple(a.shape)}, warm page cache, one process")
    print("| format | MiB / volume | write s / volume | whole volumes / s | 96^3 crops / s |")
    print("|---|---|---|---|---|")
    for name, (mib, w, full, cr) in results.items():
        print(f"| {name} | {mib:.1f} | {w:.3f} | {full:.1f} | {cr:.1f} |")
    base = results["npy float16 (medalign default)"]
    for name, r in results.items():
        print(f"{name}: {r[0] / base[0]:.2f}x the bytes, {r[2] / base[2]:.2f}x the whole-volume read rate of npy float16")


if __name__ == "__main__":
    main()
