"""Preparation speed against named baselines, side by side in one run.

1. DICOM series -> volume: medalign's reader vs the dcm2niix binary (DICOM -> NIfTI) on the same phantom studies.
2. Training-time volume loading: medalign's cached ``.npy`` (memory-mapped) vs MONAI's ``.nii.gz`` pipeline
   (LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged, ResizeWithPadOrCropd).
3. End to end, raw DICOM study to cached training volume at the chest-CT preset (1.5 x 1.5 x 3 mm,
   HU [-1000, 1000], 240 x 240 x 120): ``medalign prep --workers W`` vs the common peer pipeline on the
   same studies and the same number of processes: dcm2niix to ``.nii.gz``, then MONAI LoadImaged,
   EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged, ResizeWithPadOrCropd, and a
   float32 ``.npy`` save. The same studies once more with ``--group-by accession`` and a RIS report
   export keyed by accession number: what grouping by DICOM identity costs over folder mode, and its
   per-file identity read against pydicom's ``read_partial``.

    .venv/bin/python bench/prep.py [--studies 30] [--e2e-studies 24 --e2e-shape 160 256 256 --workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=30)
    ap.add_argument("--e2e-studies", type=int, default=24, help="end-to-end part: studies (0 skips it)")
    ap.add_argument("--e2e-shape", type=int, nargs=3, default=[160, 256, 256], metavar=("Z", "Y", "X"), help="slices, rows, columns")
    ap.add_argument("--workers", type=int, default=2, help="processes, for medalign and the peer pipeline alike")
    ap.add_argument("--peer-only", nargs=2, metavar=("IMAGES", "OUT"), help=argparse.SUPPRESS)  # the peer's whole run, in its own process
    args = ap.parse_args()
    if args.peer_only:
        _peer_pool(Path(args.peer_only[0]), Path(args.peer_only[1]), args.workers)
        return
    from medalign.config import load_config
    from medalign.data.dataset import as_unit_array
    from medalign.io.dicom import load_dicom_study
    from medalign.prep.pipeline import to_cache_dtype
    from medalign.io.nifti import save_nifti
    from medalign.prep.config import PrepConfig
    from medalign.prep.transforms import apply_preprocessing, build_preprocessing
    from medalign.synth.writer import synthesize

    work = Path(tempfile.mkdtemp(prefix="medalign_bench_"))
    synthesize(work / "raw", "ct", args.studies, seed=11)
    folders = sorted((work / "raw" / "images").iterdir())
    dcm2niix = Path(sys.executable).parent / "dcm2niix"

    t = time.perf_counter()
    volumes = [load_dicom_study(f)[0] for f in folders]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    for i, f in enumerate(folders):
        out = work / "d2n" / str(i)
        out.mkdir(parents=True)
        subprocess.run([str(dcm2niix), "-z", "n", "-f", "%s", "-o", str(out), str(f)], check=True, capture_output=True)
    t_d2n = time.perf_counter() - t
    print(f"DICOM series -> volume, {len(folders)} studies x 40 slices")
    print(f"  medalign reader        {t_ours:7.2f} s  ({len(folders) / t_ours:6.1f} studies/s)")
    print(f"  dcm2niix (baseline)    {t_d2n:7.2f} s  ({len(folders) / t_d2n:6.1f} studies/s)")
    print(f"  ratio medalign/dcm2niix speed: {t_d2n / t_ours:.2f}x")

    config = load_config(PrepConfig, "demo_ct", "prep")
    pipe = build_preprocessing(config.steps)
    (work / "nii").mkdir()
    (work / "npy").mkdir()
    for i, v in enumerate(volumes):
        save_nifti(v, work / "nii" / f"{i}.nii.gz")
        arr, _ = apply_preprocessing(v, pipe)
        np.save(work / "npy" / f"{i}.npy", to_cache_dtype(arr, "uint8"))  # what medalign prep writes
    monai_pipeline = peer_monai_pipeline((8.0, 8.0, 7.5), (-1000, 400), (48, 48, 40))  # the demo_ct preset's steps
    import torch

    t = time.perf_counter()
    for i in range(len(volumes)):
        monai_pipeline({"image": str(work / "nii" / f"{i}.nii.gz")})
    t_monai = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(len(volumes)):
        torch.from_numpy(as_unit_array(np.load(work / "npy" / f"{i}.npy", mmap_mode="r")))[None]
    t_cache = time.perf_counter() - t
    print(f"training-time loading of one preprocessed volume ({len(volumes)} volumes, 48x48x40)")
    print(f"  medalign .npy cache     {1000 * t_cache / len(volumes):8.2f} ms/volume")
    print(f"  MONAI .nii.gz pipeline  {1000 * t_monai / len(volumes):8.2f} ms/volume (baseline)")
    print(f"  ratio: {t_monai / t_cache:.1f}x faster")
    shutil.rmtree(work, ignore_errors=True)
    if args.e2e_studies:
        end_to_end(args.e2e_studies, tuple(args.e2e_shape), args.workers)


def write_chest_studies(root: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """``n`` phantom chest CTs of ``shape`` (Z, Y, X) slices at chest-CT-like spacing, with reports."""
    import csv

    from pydicom.uid import generate_uid

    from medalign.synth.ct import CTGrid, make_ct_case
    from medalign.synth.dicom_writer import FakePatient, write_ct_series
    from medalign.synth.reports import ct_report

    rng = np.random.default_rng(5)
    # the phantom spans about 300 x 300 x 300 mm whatever the grid: spacing follows the shape
    grid = CTGrid(shape=shape, spacing=(300.0 / shape[0], 384.0 / shape[1], 384.0 / shape[2]))
    rows = []
    for i in range(n):
        case = make_ct_case(rng, grid)
        write_ct_series(case.hu, grid.spacing, grid.origin_lps(), root / "images" / f"s{i:03d}", FakePatient.random(rng), generate_uid(), rng)
        rows.append([f"s{i:03d}", ct_report(case.labels, case.details, rng)])
    with open(root / "reports.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["study_id", "report"], *rows])
    return root


def ris_export(raw: Path) -> Path:
    """The studies' reports keyed by accession number, as a RIS exports them (``raw/ris.csv``)."""
    import csv

    import pydicom

    with open(raw / "reports.csv", encoding="utf-8") as f:
        reports = {r["study_id"]: r["report"] for r in csv.DictReader(f)}
    path = raw / "ris.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["accession_number", "report"])
        for folder in sorted((raw / "images").iterdir()):
            first = next(p for p in sorted(folder.iterdir()) if p.is_file())
            w.writerow([pydicom.dcmread(first, stop_before_pixels=True).AccessionNumber, reports[folder.name]])
    return path


def peer_monai_pipeline(pixdim: tuple[float, float, float], window: tuple[float, float], size: tuple[int, int, int]):
    """The peers' loading pipeline as their code writes it: MONAI's dictionary transforms from a ``.nii.gz``."""
    from monai import transforms as T

    return T.Compose([
        T.LoadImaged(keys="image"),
        T.EnsureChannelFirstd(keys="image"),
        T.Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys="image", pixdim=pixdim, mode="bilinear"),
        T.ScaleIntensityRanged(keys="image", a_min=window[0], a_max=window[1], b_min=0, b_max=1, clip=True),
        T.ResizeWithPadOrCropd(keys="image", spatial_size=size),
    ])


def _peer_one(task: tuple[str, str, str]) -> None:
    """The peer pipeline for one study: dcm2niix -> .nii.gz -> MONAI transforms -> float32 .npy."""
    folder, out, dcm2niix = map(Path, task)
    out.mkdir(parents=True)
    subprocess.run([str(dcm2niix), "-z", "y", "-f", "%s", "-o", str(out), str(folder)], check=True, capture_output=True)
    import torch

    torch.set_num_threads(1)
    pipeline = peer_monai_pipeline((1.5, 1.5, 3.0), (-1000, 1000), (240, 240, 120))  # the chest_ct preset's steps
    nii = max(out.glob("*.nii.gz"), key=lambda p: p.stat().st_size)
    x = pipeline({"image": str(nii)})["image"]
    np.save(out / "volume.npy", np.asarray(x, dtype=np.float32))


def _run_whole(argv: list[str]) -> float:
    """Seconds for a fresh Python process to run ``argv`` (start-up and imports included, as a user pays)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, capture_output=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - t


def _peer_pool(images: Path, out: Path, workers: int) -> None:
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp

    dcm2niix = Path(sys.executable).parent / "dcm2niix"
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
        list(pool.map(_peer_one, [(str(f), str(out / f.name), str(dcm2niix)) for f in sorted(images.iterdir())]))


def identity_read_times(files: list[Path]) -> tuple[float, float]:
    """Seconds a file to read (StudyInstanceUID, AccessionNumber): medalign's raw-element read and
    pydicom's ``read_partial`` stopping after SeriesInstanceUID (what the first version used)."""
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    from medalign.io.dicom_groups import read_identity

    wanted, series_uid = [Tag(0x0008, 0x0050), Tag(0x0020, 0x000D)], Tag(0x0020, 0x000E)

    def baseline(path: Path) -> tuple[str, str]:
        with open(path, "rb") as f:
            ds = read_partial(f, stop_when=lambda tag, vr, length: tag > series_uid, specific_tags=wanted)
        return str(ds.get(wanted[1]).value), str(ds.get(wanted[0]).value)

    times = []
    for read in (read_identity, baseline):
        t = time.perf_counter()
        found = [read(f) for f in files]
        times.append((time.perf_counter() - t) / len(files))
        assert len(set(found)) > 1
    return times[0], times[1]


def end_to_end(n: int, shape: tuple[int, int, int], workers: int) -> None:
    """Whole runs in fresh processes (what a user waits for), then the per-study cost of each pipeline
    in one warm process (what dominates a large export once start-up is paid)."""
    from medalign.config import load_config
    from medalign.io.atomic import atomic_save_npy
    from medalign.prep.pipeline import to_cache_dtype
    from medalign.prep.studies import load_study
    from medalign.prep.config import PrepConfig
    from medalign.prep.transforms import apply_preprocessing, build_preprocessing

    work = Path(tempfile.mkdtemp(prefix="medalign_bench_e2e_"))
    try:
        raw = write_chest_studies(work / "raw", n, shape)
        ours = _run_whole(["-m", "medalign.cli.main", "prep", "--images", str(raw / "images"), "--reports", str(raw / "reports.csv"),
                           "--out", str(work / "ours"), "--config", "chest_ct", "--workers", str(workers)])
        peer = _run_whole([str(Path(__file__).resolve()), "--peer-only", str(raw / "images"), str(work / "peer"), "--workers", str(workers)])
        ris = ris_export(raw)
        grouped = _run_whole(["-m", "medalign.cli.main", "prep", "--images", str(raw / "images"), "--reports", str(ris),
                              "--out", str(work / "grouped"), "--config", "chest_ct", "--workers", str(workers), "--group-by", "accession"])
        assert len(list((work / "grouped" / "volumes").glob("*.npy"))) == n, "--group-by accession did not prepare every study"
        ours_mb = sum(p.stat().st_size for p in (work / "ours").rglob("*.npy")) / n / 2**20
        peer_mb = sum(p.stat().st_size for p in (work / "peer").rglob("*.npy")) / n / 2**20
        print(f"raw DICOM study -> cached training volume, {n} studies of {shape[0]} slices {shape[1]}x{shape[2]}, chest_ct preset "
              f"(1.5x1.5x3 mm, 240x240x120)")
        print(f"  whole run, {workers} processes each, fresh interpreter (start-up and imports included):")
        print(f"    medalign prep --workers {workers}          {ours:7.2f} s  ({n / ours:5.2f} studies/s, {ours_mb:5.1f} MiB/volume)")
        print(f"    dcm2niix + MONAI + save (peer)   {peer:7.2f} s  ({n / peer:5.2f} studies/s, {peer_mb:5.1f} MiB/volume)")
        print(f"    ratio medalign/peer throughput: {peer / ours:.2f}x")
        print(f"    medalign prep --group-by accession, RIS reports keyed by accession number: {grouped:7.2f} s "
              f"(ratio to the peer {peer / grouped:.2f}x; grouping costs {100 * (grouped / ours - 1):+.1f}% of folder mode)")
        files = sorted(p for p in (raw / "images").rglob("*") if p.is_file())
        ours_id, partial_id = identity_read_times(files)
        print(f"    the grouping pass's identity read, one process, {len(files)} files: medalign {ours_id * 1e3:.3f} ms a file, "
              f"pydicom read_partial (baseline) {partial_id * 1e3:.3f} ms a file: {partial_id / ours_id:.2f}x faster")

        import torch

        torch.set_num_threads(1)
        config = load_config(PrepConfig, "chest_ct", "prep")
        pipe = build_preprocessing(config.steps)
        folders = sorted((raw / "images").iterdir())[: min(n, 8)]
        dcm2niix = Path(sys.executable).parent / "dcm2niix"
        _peer_one((str(folders[0]), str(work / "warm"), str(dcm2niix)))  # imports and first-call costs out of the timing
        t = time.perf_counter()
        for i, f in enumerate(folders):
            volume, _ = load_study(f, config)
            array, _ = apply_preprocessing(volume, pipe)
            atomic_save_npy(work / "steady" / f"{i}.npy", to_cache_dtype(array, config.cache_dtype))
        t_ours = (time.perf_counter() - t) / len(folders)
        t = time.perf_counter()
        for i, f in enumerate(folders):
            _peer_one((str(f), str(work / "peer_steady" / str(i)), str(dcm2niix)))
        t_peer = (time.perf_counter() - t) / len(folders)
        print(f"  per study in one warm process, 1 thread ({len(folders)} studies):")
        print(f"    medalign (read DICOM, MONAI steps with the axis-aligned spacing, uint8 save) {t_ours:6.3f} s")
        print(f"    peer (dcm2niix -z y, MONAI load + steps, float32 save)                      {t_peer:6.3f} s")
        print(f"    ratio: {t_peer / t_ours:.2f}x")
        spacing_step(load_study(folders[0], config)[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def spacing_step(volume) -> None:
    """The chest preset's spacing step on one study, after orientation: MONAI's ``Spacingd`` (general
    3D resampling) against medalign's axis-aligned step, side by side (1 thread)."""
    from monai.data import MetaTensor
    from monai.transforms import Orientationd, Spacingd

    import torch

    from medalign.prep.spacing import AxisAlignedSpacingd

    options = {"pixdim": (1.5, 1.5, 3.0), "mode": "bilinear", "padding_mode": "border"}
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None], affine=torch.as_tensor(volume.affine))
    image = Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))({"image": image})["image"]
    times, outs = {}, {}
    for name, step in (("MONAI Spacingd", Spacingd(keys="image", **options)), ("axis-aligned", AxisAlignedSpacingd(keys="image", **options))):
        step({"image": image})  # warm-up
        t = time.perf_counter()
        outs[name] = step({"image": image})["image"]
        times[name] = time.perf_counter() - t
    diff = float((outs["MONAI Spacingd"] - outs["axis-aligned"]).abs().max())
    print(f"  spacing step on {tuple(volume.array.shape)} -> {tuple(outs['axis-aligned'].shape[1:])}: MONAI Spacingd "
          f"{times['MONAI Spacingd']:.3f} s, medalign axis-aligned {times['axis-aligned']:.3f} s "
          f"({times['MONAI Spacingd'] / times['axis-aligned']:.1f}x), max difference {diff:.1e}")


if __name__ == "__main__":
    main()
