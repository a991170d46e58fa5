"""Preparation speed against named baselines, side by side in one run.

1. DICOM series -> volume: medalign's reader vs the dcm2niix binary (DICOM -> NIfTI) on the same phantom studies.
2. Training-time volume loading: medalign's cached ``.npy`` (memory-mapped) vs MONAI's ``.nii.gz`` pipeline
   (LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged, ResizeWithPadOrCropd).

    .venv/bin/python bench/prep.py [--studies 30]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=30)
    args = ap.parse_args()
    from medalign.config import load_config
    from medalign.data.dataset import as_unit_array
    from medalign.io.dicom import load_dicom_study
    from medalign.prep.build import to_cache_dtype
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
    from monai import transforms as T

    monai_pipeline = T.Compose([
        T.LoadImaged(keys="image"),
        T.EnsureChannelFirstd(keys="image"),
        T.Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys="image", pixdim=(8.0, 8.0, 7.5), mode="bilinear"),
        T.ScaleIntensityRanged(keys="image", a_min=-1000, a_max=400, b_min=0, b_max=1, clip=True),
        T.ResizeWithPadOrCropd(keys="image", spatial_size=(48, 48, 40)),
    ])
    import torch

    t = time.perf_counter()
    for i in range(len(volumes)):
        x = monai_pipeline({"image": str(work / "nii" / f"{i}.nii.gz")})["image"]
    t_monai = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(len(volumes)):
        x = torch.from_numpy(as_unit_array(np.load(work / "npy" / f"{i}.npy", mmap_mode="r")))[None]
    t_cache = time.perf_counter() - t
    print(f"training-time loading of one preprocessed volume ({len(volumes)} volumes, 48x48x40)")
    print(f"  medalign .npy cache     {1000 * t_cache / len(volumes):8.2f} ms/volume")
    print(f"  MONAI .nii.gz pipeline  {1000 * t_monai / len(volumes):8.2f} ms/volume (baseline)")
    print(f"  ratio: {t_monai / t_cache:.1f}x faster")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
