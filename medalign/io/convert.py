"""``medalign convert``: one DICOM series folder or one file of a registered format as NIfTI, with
world geometry as dcm2niix writes it; an OCT file's fundus image written beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medalign.errors import InputError
from medalign.io.dicom import load_dicom_study
from medalign.io.nifti import save_nifti
from medalign.io.readers import read_file, reader_for, suffix_list
from medalign.io.volume import SeriesSelection, Volume

#: what convert takes from a DICOM folder: any modality, plane or image type but localizers; frames
#: without positions stacked in order (the returned reason says which series was taken and how)
CONVERT_SELECTION = SeriesSelection(modalities=[], planes=[], skip_image_types=["LOCALIZER"], skip_secondary_capture=False,
                                    min_slices=1, on_missing_frame_positions="frame_order")


def convert_to_nifti(source: Path, output: Path) -> tuple[Volume, str]:
    """Write ``source`` (a DICOM series folder or a registered file) to ``output`` (``.nii``/``.nii.gz``);
    a fundus image (``volume.localizer``) goes to ``<output>_localizer.nii[.gz]``. Returns the volume
    and one line saying what was read and how."""
    source, output = Path(source), Path(output)
    if not str(output).endswith((".nii", ".nii.gz")):
        raise InputError(f"{output}: output must end in .nii or .nii.gz")
    if reader_for(source) is not None:
        volume, reason = read_file(source)[0]
        if volume.laterality or volume.modality == "OCT":
            reason += f", eye {volume.laterality or 'unknown'}"
        if volume.localizer is not None:
            sx, sy = volume.localizer_spacing or (1.0, 1.0)  # the pixel-size-unknown case is said below, not hidden
            fundus = Volume(array=np.ascontiguousarray(volume.localizer.T[:, :, None]), affine=np.diag([sx, sy, 1.0, 1.0]))
            fundus_path = Path(str(output).replace(".nii", "_localizer.nii", 1))
            save_nifti(fundus, fundus_path)
            reason += f"; fundus image -> {fundus_path}" + ("" if volume.localizer_spacing else " (pixel size unknown: written as 1 mm)")
    elif source.is_dir():
        volume, reason = load_dicom_study(source, CONVERT_SELECTION)
    else:
        raise InputError(f"{source}: neither a DICOM series folder nor a file medalign reads ({suffix_list()})")
    save_nifti(volume, output)
    return volume, reason
