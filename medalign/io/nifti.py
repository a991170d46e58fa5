"""NIfTI volumes through nibabel (imported when a file is read or written: ``--help`` stays fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.atomic import atomic_write
from medalign.io.readers import register_reader
from medalign.io.volume import Volume


def open_nifti(path: Path):
    """A nibabel image of ``path``; a ``.nii.gz`` is decompressed in one go with ISA-L (``isal``, 1.6x
    faster than the gzip module nibabel uses on a 512 x 512 x 200 CT; ``bench/prep_ct_rate.py``), a NIfTI-2 or anything
    ``from_bytes`` refuses through ``nib.load``. Raises what nibabel raises."""
    import nibabel as nib

    path = Path(path)
    if path.name.lower().endswith(".nii.gz"):
        from isal import igzip

        raw = igzip.decompress(path.read_bytes())
        try:
            return nib.Nifti1Image.from_bytes(raw)
        except Exception:  # noqa: BLE001 - not NIfTI-1 (e.g. NIfTI-2): nibabel's own loader decides
            pass
    return nib.load(str(path))


def load_nifti(path: Path) -> Volume:
    """Read a 3D NIfTI (a trailing singleton 4th axis is dropped) as a :class:`Volume`."""
    path = Path(path)
    try:
        img = open_nifti(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for bad files
        raise InputError(f"{path}: unreadable NIfTI ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    affine = np.asarray(img.affine, dtype=float)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: singular affine")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: volume holds NaN or infinite values")
    return Volume(array=data, affine=affine, source="nifti")


def save_nifti(volume: Volume, path: Path) -> None:
    """Write ``volume`` as NIfTI-1 (float32, or int16 when values are whole numbers in range), atomically."""
    import nibabel as nib

    data = volume.array
    if _whole_numbers_in_int16(data):
        data = np.round(data).astype(np.int16)
    img = nib.Nifti1Image(data, volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"

    def _write(tmp: Path) -> None:
        nib.save(img, str(tmp) + suffix)
        Path(str(tmp) + suffix).replace(tmp)

    atomic_write(Path(path), _write)


def _whole_numbers_in_int16(data: np.ndarray) -> bool:
    """Whether ``data`` holds whole numbers (to ``np.allclose``) within int16's range; a strided sample
    answers first, so a relevance map of 10^7 fractional voxels costs a few thousand comparisons."""
    if data.dtype.kind in "iu":
        return data.size == 0 or (int(data.min()) >= -32768 and int(data.max()) <= 32767)
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // 4096)]
    if not np.allclose(sample, np.round(sample)):
        return False
    return bool(np.allclose(data, np.round(data)) and data.min() >= -32768 and data.max() <= 32767)


@register_reader("nifti", suffixes=(".nii", ".nii.gz"), description="nifti")
def read_nifti(path: Path, name: str) -> list[Volume]:
    """The registry's entry for ``.nii``/``.nii.gz``: the file's one volume (:func:`load_nifti`)."""
    return [load_nifti(path)]
