"""Which reader reads which vendor OCT format, and what medalign's Topcon reader costs.

1. Correctness per format and reader: every file below is read with eyepy (0.21), oct-converter
   (0.7.0, as shipped) and medalign (``read_volumes``), under this project's pins (NumPy 2.4).
   A reading counts when its pixels, B-scan count and eye equal what the file holds. Files: the real
   Spectralis ``.vol`` of the tests; an ``.e2e`` written with eyepy's structures; ``.fda``
   (JPEG 2000 slices, raw 16-bit) and ``.fds`` written with oct-converter's structures; a Cirrus
   cube. (Written files favour the library whose structures wrote them; the real ``.vol`` does not.)
2. Speed: medalign's Topcon reader against oct-converter's own ``FDS`` reader given ``np.frombuffer``
   in place of the removed ``np.fromstring`` (its only failure), on one Topcon-sized ``.fds``.

    .venv/bin/python bench/oct_readers.py [--bscans 128 --width 512 --depth 650]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' writers of each format


def _quiet(fn):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _files(folder: Path, rng) -> dict[str, dict]:
    """``{label: {"path", "pixels" (A-scans, depth, B-scans) as integers or floats, "eye"}}``."""
    from e2e_files import encodable, write_e2e
    from topcon_files import write_topcon

    files = {}
    vol = ROOT / "tests" / "data" / "oct" / "heyex_valid.vol"
    files["Spectralis .vol (real)"] = {"path": vol, "pixels": None, "eye": "OD", "n": 1}
    e2e = encodable(rng.uniform(0.001, 0.5, (5, 40, 48)).astype(np.float32))
    write_e2e(folder / "eye.e2e", [{"bscans": e2e, "laterality": "OS", "scale_y": 0.0039, "field_deg": (20.0, 15.0),
                                    "scan_pattern": 3, "localizer": rng.integers(0, 255, (32, 32)).astype(np.uint8)}],
              {"firstname": "A", "surname": "B", "patient_id": "C", "birthdate": 2415021})
    files[".e2e (eyepy's structures)"] = {"path": folder / "eye.e2e", "pixels": e2e.transpose(2, 1, 0), "eye": "OS", "n": 5}
    b8 = rng.integers(0, 255, (4, 40, 32)).astype(np.uint8)
    b16 = rng.integers(0, 65535, (4, 40, 32)).astype(np.uint16)
    write_topcon(folder / "j2k.fda", b8, eye=1)
    files[".fda JPEG 2000 (oct-converter's structures)"] = {"path": folder / "j2k.fda", "pixels": b8.transpose(2, 1, 0), "eye": "OS", "n": 4}
    write_topcon(folder / "raw.fda", b16, eye=0, pixels="raw")
    files[".fda raw (oct-converter's structures)"] = {"path": folder / "raw.fda", "pixels": b16.transpose(2, 1, 0), "eye": "OD", "n": 4}
    write_topcon(folder / "raw.fds", b16, eye=1, pixels="raw")
    files[".fds raw (oct-converter's structures)"] = {"path": folder / "raw.fds", "pixels": b16.transpose(2, 1, 0), "eye": "OS", "n": 4}
    cube = rng.integers(0, 255, (128, 512, 1024), dtype=np.uint8)
    cirrus = folder / "P1_Macular Cube 512x128_1-2-2020_3-4-5_OD_sn1_cube_z.img"
    cirrus.write_bytes(cube.tobytes())
    files["Cirrus .img cube"] = {"path": cirrus, "pixels": cube.transpose(1, 2, 0), "eye": "OD", "n": 128}
    return files


def _eyepy(path: Path):
    import eyepy.io as eio

    reader = {".vol": eio.import_heyex_vol, ".e2e": eio.import_heyex_e2e, ".fda": eio.import_topcon_fda}.get(path.suffix)
    if reader is None:
        raise NotImplementedError(f"no {path.suffix} reader")
    ev = _quiet(lambda: reader(path))
    eye = {"OD": "OD", "OS": "OS"}.get(str(getattr(ev, "laterality", "")).upper()[:2], str(getattr(ev, "laterality", "")))
    return np.asarray(ev.data).transpose(2, 1, 0), eye


def _oct_converter(path: Path):
    from oct_converter.readers import E2E, FDA, FDS, IMG

    if path.suffix == ".img":
        scan = IMG(path).read_oct_volume(rows=1024, cols=512)
    elif path.suffix in (".fda", ".fds", ".e2e"):
        cls = {".fda": FDA, ".fds": FDS, ".e2e": E2E}[path.suffix]
        scan = _quiet(lambda: cls(path).read_oct_volume())
        scan = scan[0] if isinstance(scan, list) else scan
    else:
        raise NotImplementedError(f"no {path.suffix} reader")
    eye = {"R": "OD", "L": "OS"}.get(scan.laterality, scan.laterality)
    return np.stack(scan.volume, axis=-1).transpose(1, 0, 2), eye


def _medalign(path: Path):
    from medalign.io.readers import read_volumes

    vol = read_volumes(path)[0]
    return vol.array, vol.laterality


def _verdict(read, truth: dict) -> str:
    try:
        pixels, eye = read(truth["path"])
    except Exception as e:  # noqa: BLE001 - the failure is the measurement
        return f"fails ({e.__class__.__name__}: {str(e).splitlines()[0][:60] if str(e) else ''})"
    if pixels.shape[2] != truth["n"]:
        return f"wrong: {pixels.shape[2]} B-scans"
    if eye != truth["eye"]:
        return f"wrong eye ({eye!r})"
    if truth["pixels"] is not None:
        want = truth["pixels"]
        top = np.iinfo(want.dtype).max if want.dtype.kind == "u" else 1.0
        got = pixels.astype(np.float64)
        if got.max() <= 1.0 and top > 1.0:
            got = got * top  # a reader that scales to [0, 1]
        if got.shape != want.shape or not np.allclose(got, want, atol=0.5 if top > 1 else 1e-6):
            return "wrong pixels"
    return "ok"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bscans", type=int, default=128)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=650)
    a = ap.parse_args()
    import numpy

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = _files(folder, rng)
        readers = {"eyepy 0.21 import_*": _eyepy, "oct-converter 0.7.0": _oct_converter, "medalign": _medalign}
        print(f"numpy {numpy.__version__}")
        print("| file | " + " | ".join(readers) + " |\n|---|" + "---|" * len(readers))
        score = dict.fromkeys(readers, 0)
        for label, truth in files.items():
            verdicts = [_verdict(r, truth) for r in readers.values()]
            for name, v in zip(readers, verdicts):
                score[name] += v == "ok"
            print(f"| {label} | " + " | ".join(verdicts) + " |")
        print("read correctly: " + ", ".join(f"{n} {s}/{len(files)}" for n, s in score.items()))

        from oct_converter.readers import FDS
        from topcon_files import write_topcon

        from medalign.io.oct_topcon import load_topcon

        big = folder / "big.fds"
        write_topcon(big, rng.integers(0, 65535, (a.bscans, a.depth, a.width)).astype(np.uint16), pixels="raw")
        mb = big.stat().st_size / 2**20
        plain, laid_out = "oct-converter FDS (np.frombuffer given back)", "the same, then laid out as medalign's volume"
        timings = {"medalign": [], plain: [], laid_out: []}
        original = getattr(np, "fromstring")
        np.fromstring = lambda b, dtype: np.frombuffer(b, dtype=dtype)
        try:
            for _ in range(3):
                t = time.perf_counter()
                load_topcon(big)
                timings["medalign"].append(time.perf_counter() - t)
                t = time.perf_counter()
                scan = _quiet(lambda: FDS(big).read_oct_volume())
                timings[plain].append(time.perf_counter() - t)
                np.ascontiguousarray(np.stack(scan.volume, axis=-1).transpose(1, 0, 2), dtype=np.float32) / 65535.0
                timings[laid_out].append(time.perf_counter() - t)
        finally:
            np.fromstring = original
        best = {k: min(v) for k, v in timings.items()}
        print(f"\n.fds of {a.bscans} B-scans of {a.width}x{a.depth} ({mb:.0f} MiB), best of 3:")
        for k, v in best.items():
            print(f"  {k}: {v:.3f} s")
        print(f"  medalign / {plain}: {best[plain] / best['medalign']:.2f}x speed (that returns uint16 B-scans, not a volume)")
        print(f"  medalign / {laid_out} (float32 in [0, 1], (A-scans, depth, B-scans)): {best[laid_out] / best['medalign']:.2f}x speed")


if __name__ == "__main__":
    main()
