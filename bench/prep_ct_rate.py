"""CT-RATE preparation speed: ``medalign prep --layout ct-rate`` against CT-CLIP's own preprocessing,
side by side on the same CT-RATE-layout volumes, the same target and the same number of processes.

The baseline does what CT-CLIP's ``data_preprocess/preprocess_ctrate_valid.py`` does, step for step
(written here from reading it; their file is not copied): nibabel ``get_fdata()`` (float64), HU =
RescaleSlope * value + RescaleIntercept from the metadata CSV (looked up by VolumeName; a dict here,
a pandas frame there), clip to
[-1000, 1000], divide by 1000, float32, ``transpose(2, 0, 1)``, ``torch.nn.functional.interpolate``
(trilinear) to 1.5 x 0.75 x 0.75 mm, ``np.savez``; then their data loader's centre crop / pad to
480 x 480 x 240 (``CTReportDatasetinfer``), saved once more, so both sides end at a training-ready
array of the same size. Processes: a ``multiprocessing.Pool`` of W for them, ``--workers W`` for us.
medalign runs the preset ``chest_ct`` with CT-CLIP's target (0.75 x 0.75 x 1.5 mm, 480 x 480 x 240)
and writes its usual uint8 cache (CT-CLIP writes float32: the sizes are printed).

    .venv/bin/python bench/prep_ct_rate.py [--volumes 6 --shape 200 512 512 --workers 2]
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET_MM = (1.5, 0.75, 0.75)  # CT-CLIP's (z, y, x)
TARGET_SHAPE = (240, 480, 480)  # (z, y, x)


def write_ct_rate_tree(root: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """``n`` CT-RATE-layout volumes of ``shape`` (Z, Y, X) at 0.75 x 0.75 x 1.25 mm, stored HU + 1024 with
    a wrong header voxel size, metadata CSV right (as ``synth --layout ct-rate`` writes, at full size)."""
    import nibabel as nib

    from medalign.io.volume import LPS_TO_RAS
    from medalign.synth.ct import CTGrid, make_ct_case
    from medalign.synth.writer import write_csv

    rng = np.random.default_rng(3)
    spacing = (1.25, 0.75, 0.75)
    grid = CTGrid(shape=shape, spacing=spacing)
    lps = np.diag([1.0, 1.0, 1.0, 1.0])  # header: 1 mm, deliberately wrong
    lps[:3, 3] = grid.origin_lps()
    meta, reports = [], []
    for i in range(n):
        name = f"valid_{i + 1}_a_1.nii.gz"
        hu = make_ct_case(rng, grid).hu.transpose(2, 1, 0)
        folder = root / "valid" / f"valid_{i + 1}" / f"valid_{i + 1}_a"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.round(hu + 1024).astype(np.int16), LPS_TO_RAS @ lps), str(folder / name))
        meta.append([name, f"[{spacing[1]}, {spacing[2]}]", spacing[0], 1, -1024])
        reports.append([name, "", "", "No pleural effusion.", "Normal."])
    write_csv(root / "metadata" / "validation_metadata.csv", ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"], meta)
    write_csv(root / "radiology_text_reports" / "validation_reports.csv",
              ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"], reports)
    return root


def _ct_clip_one(task: tuple[str, str, str]) -> None:
    """CT-CLIP's steps for one volume (see the module docstring)."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    path, metadata, out = task
    name = os.path.basename(path)
    row = _metadata(metadata)[name]  # their script: a pandas frame read once, looked up by VolumeName
    slope, intercept = float(row["RescaleSlope"]), float(row["RescaleIntercept"])
    xy = float(row["XYSpacing"][1:][:-2].split(",")[0])
    z = float(row["ZSpacing"])
    data = nib.load(path).get_fdata()
    data = np.clip(slope * data + intercept, -1000, 1000)
    data = (data / 1000).astype(np.float32).transpose(2, 0, 1)
    tensor = torch.tensor(data)[None, None]
    current = (z, xy, xy)
    size = [int(tensor.shape[2 + i] * current[i] / TARGET_MM[i]) for i in range(3)]
    resized = F.interpolate(tensor, size=size, mode="trilinear", align_corners=False).numpy()[0, 0]
    np.savez(os.path.join(out, name + ".npz"), resized)
    # their loader: centre crop, then pad, to 240 x 480 x 480 (z, y, x)
    array = np.load(os.path.join(out, name + ".npz"))["arr_0"]
    slices = tuple(slice(max(0, (s - t) // 2), max(0, (s - t) // 2) + t) for s, t in zip(array.shape, TARGET_SHAPE))
    array = array[slices]
    pads = [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(array.shape, TARGET_SHAPE)]
    np.save(os.path.join(out, name + ".npy"), np.pad(array, pads, constant_values=-1.0))


@functools.lru_cache(maxsize=1)
def _metadata(path: str) -> dict[str, dict[str, str]]:
    """The metadata CSV by VolumeName, read once per process (pandas is not a medalign dependency)."""
    with open(path, encoding="utf-8") as f:
        return {row["VolumeName"]: row for row in csv.DictReader(f)}


def _ct_clip_pool(root: Path, out: Path, workers: int) -> None:
    from multiprocessing import get_context

    files = sorted(str(p) for p in (root / "valid").rglob("*.nii.gz"))
    out.mkdir(parents=True)
    with get_context("forkserver").Pool(workers) as pool:
        list(pool.imap(_ct_clip_one, [(f, str(root / "metadata" / "validation_metadata.csv"), str(out)) for f in files]))


def _run_whole(argv: list[str]) -> float:
    """Seconds for a fresh Python process to run ``argv`` (start-up and imports included, as a user pays)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:3])}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def steady(root: Path, preset: Path, work: Path) -> None:
    """Per volume in one warm process, 1 thread (start-up paid): what dominates at CT-RATE's 50,188 volumes."""
    import torch

    from medalign.config import load_config
    from medalign.io.atomic import atomic_save_npy
    from medalign.io.ct_rate import load_ct_rate_volume, read_metadata
    from medalign.prep.config import PrepConfig
    from medalign.prep.pipeline import to_cache_dtype
    from medalign.prep.transforms import apply_preprocessing, build_preprocessing

    torch.set_num_threads(1)
    files = sorted((root / "valid").rglob("*.nii.gz"))
    metadata = read_metadata(root)
    config = load_config(PrepConfig, str(preset), "prep")
    pipe = build_preprocessing(config.steps)
    (work / "steady_theirs").mkdir()
    _ct_clip_one((str(files[0]), str(root / "metadata" / "validation_metadata.csv"), str(work / "steady_theirs")))  # first-call costs
    apply_preprocessing(load_ct_rate_volume(files[0], metadata[files[0].name]), pipe)
    t = time.perf_counter()
    for i, f in enumerate(files):
        array, _ = apply_preprocessing(load_ct_rate_volume(f, metadata[f.name]), pipe)
        atomic_save_npy(work / "steady_ours" / f"{i}.npy", to_cache_dtype(array, config.cache_dtype))
    t_ours = (time.perf_counter() - t) / len(files)
    t = time.perf_counter()
    for f in files:
        _ct_clip_one((str(f), str(root / "metadata" / "validation_metadata.csv"), str(work / "steady_theirs")))
    t_theirs = (time.perf_counter() - t) / len(files)
    print(f"  per volume in one warm process, 1 thread ({len(files)} volumes):")
    print(f"    medalign (read + HU, MONAI steps with the axis-aligned spacing, uint8 save)  {t_ours:6.3f} s")
    print(f"    CT-CLIP's steps (baseline)                                                  {t_theirs:6.3f} s")
    print(f"    ratio: {t_theirs / t_ours:.2f}x")


def step_costs(root: Path) -> None:
    """What each of medalign's changes for CT-RATE-size volumes buys, one volume, 1 thread, each beside
    its named baseline (median of 3): nibabel's gzip read vs ``open_nifti`` (ISA-L); the C-order copy
    the pipeline no longer makes; the slice-axis gather by ``index_select`` vs advanced indexing;
    MONAI's ``ScaleIntensityRanged`` vs the fused window step."""
    import nibabel as nib
    import torch
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRanged

    from medalign.io.nifti import open_nifti
    from medalign.prep.window import FusedScaleIntensityRanged

    torch.set_num_threads(1)
    path = str(next((root / "valid").rglob("*.nii.gz")))

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[1]

    rows = [("read .nii.gz to an array", best(lambda: np.asanyarray(nib.load(path).dataobj)), best(lambda: np.asanyarray(open_nifti(path).dataobj)),
             "nibabel (gzip module)", "open_nifti (ISA-L)")]
    array = np.asanyarray(open_nifti(path).dataobj).astype(np.float32)
    rows.append(("hand the volume to the pipeline", best(lambda: np.ascontiguousarray(array)), best(lambda: torch.from_numpy(array)),
                 "C-order copy (before)", "as nibabel gives it"))
    image = torch.from_numpy(np.ascontiguousarray(array))[None]
    lo = torch.linspace(0, image.shape[-1] - 1, int(image.shape[-1] / 1.2)).long()
    rows.append(("gather along the slice axis", best(lambda: image.index_select(3, lo)), best(lambda: image[..., lo]),
                 "index_select", "advanced indexing"))
    window = {"a_min": -1000.0, "a_max": 1000.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
    meta = MetaTensor(image)
    rows.append(("window to [0, 1]", best(lambda: ScaleIntensityRanged(keys="image", **window)({"image": meta})),
                 best(lambda: FusedScaleIntensityRanged(keys="image", **window)({"image": meta})), "MONAI ScaleIntensityRanged", "fused window step"))
    print(f"  what each change buys, one {array.shape} volume, 1 thread (median of 3):")
    for what, before, after, baseline, ours in rows:
        gain = f"{before / after:.1f}x" if after > 1e-3 else "the copy is gone"
        print(f"    {what}: {baseline} {before:.3f} s, {ours} {after:.3f} s ({gain})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--volumes", type=int, default=6)
    ap.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ct-clip-only", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ct_clip_only:
        _ct_clip_pool(Path(args.ct_clip_only[0]), Path(args.ct_clip_only[1]), args.workers)
        return
    work = Path(tempfile.mkdtemp(prefix="medalign_bench_ctrate_"))
    try:
        root = write_ct_rate_tree(work / "dataset", args.volumes, tuple(args.shape))
        preset = work / "ct_clip_target.yaml"
        preset.write_text("base: chest_ct\nsteps:\n  - orientation: {axcodes: RAS}\n  - spacing: {pixdim: [0.75, 0.75, 1.5]}\n"
                          "  - window: {a_min: -1000.0, a_max: 1000.0}\n  - crop_or_pad: {spatial_size: [480, 480, 240]}\n", encoding="utf-8")
        ours = _run_whole(["-m", "medalign.cli.main", "prep", "--layout", "ct-rate", "--images", str(root), "--out", str(work / "ours"),
                           "--config", str(preset), "--workers", str(args.workers)])
        theirs = _run_whole([str(Path(__file__).resolve()), "--ct-clip-only", str(root), str(work / "theirs"), "--workers", str(args.workers)])
        n = args.volumes
        ours_volumes = sorted((work / "ours" / "volumes").glob("*.npy"))
        assert len(ours_volumes) == n, "medalign did not prepare every volume"
        shape_ours = np.load(ours_volumes[0], mmap_mode="r").shape
        shape_theirs = np.load(next((work / "theirs").glob("*.npy")), mmap_mode="r").shape
        mb = {k: sum(p.stat().st_size for p in (work / k).rglob(pat)) / n / 2**20 for k, pat in (("ours", "*.npy"), ("theirs", "*.np[yz]"))}
        print(f"CT-RATE layout -> training array, {n} volumes of {args.shape[0]} slices {args.shape[1]}x{args.shape[2]} "
              f"(0.75 x 0.75 x 1.25 mm), target 0.75 x 0.75 x 1.5 mm, 480 x 480 x 240; {args.workers} processes each, fresh interpreter")
        print(f"  medalign prep --layout ct-rate      {ours:7.2f} s  ({n / ours:5.2f} volumes/s; array {shape_ours}, {mb['ours']:6.1f} MiB/volume)")
        print(f"  CT-CLIP's preprocessing (baseline)  {theirs:7.2f} s  ({n / theirs:5.2f} volumes/s; array {shape_theirs}, "
              f"{mb['theirs']:6.1f} MiB/volume written)")
        print(f"  ratio medalign/CT-CLIP throughput: {theirs / ours:.2f}x")
        steady(root, preset, work)
        step_costs(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
