"""Training volumes per second out of medalign's cache, against MONAI reading the same volumes from .nii.gz.

Readers of the same prepared volumes, one after the other in this process, each through a
``torch.utils.data.DataLoader`` with the same batch size and workers:
  1. medalign: ``StudyDataset`` over the memory-mapped ``.npy`` cache (what training reads; the
     volume stays float16 until the device converts it);
  2. baseline: MONAI ``Dataset(LoadImaged + EnsureChannelFirstd)`` over the same volumes saved as ``.nii.gz``;
  3. ceiling: the same arrays already in memory, copied into tensors (the same bytes, no file);
  and, for information, medalign with the training augmentation: flip and intensity jitter in the
  loader, and flip in the loader with the jitter left to the device (``data.intensity_on: device``).
Goals (issue 3): medalign >= 20x the baseline, and within 2x of the in-memory ceiling.
``--shape X Y Z`` resamples the dataset's volumes to that size first (e.g. the chest-CT preset's
240 x 240 x 120), written in ``--dtype`` (uint8 by default, as ``medalign prep`` writes it).

    .venv/bin/python bench/loader.py --data /tmp/demo_ct/dataset --batch 24 --workers 2
    .venv/bin/python bench/loader.py --data /tmp/demo_ct/dataset --batch 4 --workers 2 --studies 24 --shape 240 240 120
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rate(loader, passes: int) -> float:
    """Volumes per second over ``passes`` full passes (after one warm-up batch)."""
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(passes):
        for batch in loader:
            image = batch["image"] if isinstance(batch, dict) else batch
            n += image.shape[0]
    return n / (time.perf_counter() - t0)


class InMemory(torch.utils.data.Dataset):
    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.arrays[i])[None]  # no copy: collating into the batch is the one copy, as for medalign


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--studies", type=int, default=240)
    p.add_argument("--shape", type=int, nargs=3, default=None)
    p.add_argument("--dtype", default="uint8", choices=["uint8", "float16"], help="cache dtype with --shape (prep's default: uint8)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(a, Path(tmp))


def run(a, tmp: Path) -> None:

    import nibabel as nib
    from monai.data import Dataset as MonaiDataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from medalign.data.augment import build_augmentation
    from medalign.data.dataset import StudyDataset
    from medalign.prep.manifest import read_manifest

    manifest = read_manifest(a.data)
    manifest = manifest.subset_rows(range(min(a.studies, len(manifest))))
    if a.shape:  # resample into a cache of that size, laid out as prep writes it
        from scipy.ndimage import zoom

        from medalign.prep.manifest import Manifest
        from medalign.prep.pipeline import to_cache_dtype

        names = []
        for i in range(len(manifest)):
            v = np.load(manifest.volume_path(i)).astype(np.float32)
            big = zoom(v, [t / s for t, s in zip(a.shape, v.shape)], order=1)
            np.save(tmp / f"v{i}.npy", to_cache_dtype(np.clip(big, 0, 1), a.dtype))
            names.append(f"v{i}.npy")
        manifest = Manifest(tmp, {**manifest.columns, "volume": names}, manifest.findings)
    arrays = [np.load(manifest.volume_path(i)) for i in range(len(manifest))]
    kw = dict(batch_size=a.batch, num_workers=a.workers, persistent_workers=a.workers > 0)
    results = {}
    results["medalign .npy cache (mmap)"] = rate(torch.utils.data.DataLoader(StudyDataset(manifest), **kw), a.passes)
    files = []
    for i, arr in enumerate(arrays):
        f = tmp / f"{i}.nii.gz"
        nib.save(nib.Nifti1Image(arr.astype(np.float32), np.eye(4)), f)
        files.append({"image": str(f)})
    monai_ds = MonaiDataset(files, Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image")]))
    results["MONAI Dataset(LoadImaged) .nii.gz"] = rate(torch.utils.data.DataLoader(monai_ds, **kw), a.passes)
    results["in-memory arrays (ceiling)"] = rate(torch.utils.data.DataLoader(InMemory(arrays), **kw), a.passes)
    augment = build_augmentation([0], 0.05)
    results["medalign + flip/intensity augmentation"] = rate(torch.utils.data.DataLoader(StudyDataset(manifest, augment=augment), **kw), a.passes)
    # data.intensity_on: device (the GPU presets): flips (and crops) on the uint8 volume, jitter left to the device
    on_device = StudyDataset(manifest, augment=build_augmentation([0], 0.0), device_intensity=0.05)
    results["medalign + flip, intensity on device"] = rate(torch.utils.data.DataLoader(on_device, **kw), a.passes)

    shape, dtype = arrays[0].shape, arrays[0].dtype
    print(f"{len(arrays)} volumes {shape} ({dtype} cache), batch {a.batch}, {a.workers} workers, {a.passes} passes")
    for name, r in results.items():
        print(f"  {name:40s} {r:9.1f} volumes/s")
    ours = results["medalign .npy cache (mmap)"]
    print(f"medalign / MONAI .nii.gz: {ours / results['MONAI Dataset(LoadImaged) .nii.gz']:.1f}x  (goal >= 20x)")
    print(f"in-memory ceiling / medalign: {results['in-memory arrays (ceiling)'] / ours:.2f}x  (goal <= 2x)")


if __name__ == "__main__":
    main()
