"""DICOM reading on real files (pydicom's test data) and phantom series, against dcm2niix."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

from medalign.errors import InputError
from medalign.io.dicom import is_secondary_capture, load_dicom_study, scan_series, select_series
from medalign.io.dicom_slices import slices_from_file, volume_from_slices
from medalign.io.volume import SeriesSelection

ANY = SeriesSelection(modalities=[], planes=[], min_slices=1)
TESTDATA = Path(get_testdata_file("CT_small.dcm", download=False)).parent
CT5N = TESTDATA / "dicomdirtests" / "98892001" / "CT5N"
DCM2NIIX = Path(sys.executable).parent / "dcm2niix"


def dcm2niix_canonical(folder: Path, tmp: Path) -> nib.Nifti1Image:
    """The largest NIfTI dcm2niix writes for ``folder``, reoriented to closest canonical (RAS)."""
    out = tmp / "dcm2niix"
    out.mkdir()
    subprocess.run([str(DCM2NIIX), "-z", "n", "-f", "%s_%p", "-o", str(out), str(folder)], check=True, capture_output=True)
    biggest = max(out.glob("*.nii"), key=lambda p: p.stat().st_size)
    return nib.as_closest_canonical(nib.load(str(biggest)))


def assert_matches_dcm2niix(volume, folder: Path, tmp: Path) -> None:
    ref = dcm2niix_canonical(folder, tmp)
    mine = nib.as_closest_canonical(nib.Nifti1Image(volume.array, volume.affine))
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine.affine, ref.affine, atol=0.01)
    np.testing.assert_allclose(np.asarray(mine.dataobj), np.asarray(ref.dataobj, dtype=np.float64), atol=0.5)


def copy_shuffled(src_files: list[Path], dst: Path, seed: int) -> None:
    dst.mkdir(parents=True)
    files = list(src_files)
    random.Random(seed).shuffle(files)
    for n, f in enumerate(files):
        shutil.copy(f, dst / f"{random.Random(seed + n).getrandbits(40):010x}")


def test_ct_small_values_and_geometry():
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    ds = pydicom.dcmread(path)
    # the one file on its own: the test-data folder holds many unrelated objects
    vol = volume_from_slices(slices_from_file(path)[0])
    expected = apply_rescale(ds.pixel_array, ds).astype(np.float32)
    assert vol.array.shape == (ds.Columns, ds.Rows, 1)
    np.testing.assert_allclose(vol.array[:, :, 0], expected.T)
    # voxel (0, 0, 0) sits at ImagePositionPatient, converted from LPS to RAS
    ipp = np.asarray(ds.ImagePositionPatient, float)
    np.testing.assert_allclose(vol.affine[:3, 3], ipp * [-1, -1, 1])
    np.testing.assert_allclose(vol.spacing[:2], [float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])


def test_real_series_matches_dcm2niix_in_any_file_order(tmp_path):
    for seed in (0, 1):
        folder = tmp_path / f"shuffled{seed}"
        copy_shuffled(sorted(CT5N.iterdir()), folder, seed)
        vol, _ = load_dicom_study(folder, ANY)
        assert vol.array.shape == (16, 16, 5)
        assert vol.spacing[2] == pytest.approx(2.5)
        (tmp_path / f"ref{seed}").mkdir()
        assert_matches_dcm2niix(vol, folder, tmp_path / f"ref{seed}")


def test_phantom_study_skips_localizer_and_matches_dcm2niix(phantom_ct, tmp_path):
    folders = sorted((phantom_ct / "images").iterdir())
    with_localizer = None
    for f in folders:
        series, _ = scan_series(f)
        if len(series) == 2:
            with_localizer = (f, series)
            break
    assert with_localizer is not None, "the phantom set should include studies with a localizer"
    folder, series = with_localizer
    chosen, reason = select_series(series, SeriesSelection())
    assert "LOCALIZER" not in chosen.image_type and "LOCALIZER" in reason
    vol, _ = load_dicom_study(folder)
    assert vol.array.shape == (96, 96, 40)
    # dcm2niix converts both series; compare with the axial one (the larger file)
    assert_matches_dcm2niix(vol, folder, tmp_path)


def test_oct_multiframe_geometry(tmp_path):
    from medalign.synth.oct import OCT_SHAPE, OCT_SPACING
    from medalign.synth.writer import synthesize

    synthesize(tmp_path / "oct", "oct", studies=1, seed=3)
    folder = next((tmp_path / "oct" / "images").iterdir())
    vol, reason = load_dicom_study(folder, SeriesSelection(modalities=["OPT"]))
    frames, rows, cols = OCT_SHAPE
    assert vol.array.shape == (cols, rows, frames)
    np.testing.assert_allclose(vol.spacing, (OCT_SPACING[2], OCT_SPACING[1], OCT_SPACING[0]), rtol=1e-6)
    assert_matches_dcm2niix(vol, folder, tmp_path)


def test_oct_is_not_secondary_capture():
    assert is_secondary_capture("1.2.840.10008.5.1.4.1.1.7")
    assert is_secondary_capture("1.2.840.10008.5.1.4.1.1.7.4")
    assert not is_secondary_capture("1.2.840.10008.5.1.4.1.1.77.1.5.4")


def _phantom_axial_files(phantom_ct: Path) -> list[Path]:
    folder = sorted((phantom_ct / "images").iterdir())[0]
    series, _ = scan_series(folder)
    return max(series, key=lambda s: s.n_frames).files


def test_missing_slice_is_refused(phantom_ct, tmp_path):
    files = _phantom_axial_files(phantom_ct)
    positions = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    keep = [f for f in positions if f != positions[len(positions) // 2]]
    copy_shuffled(keep, tmp_path / "gap", 0)
    with pytest.raises(InputError, match="uneven slice spacing"):
        load_dicom_study(tmp_path / "gap")


def test_duplicate_position_and_size_mismatch_are_refused(phantom_ct, tmp_path):
    from pydicom.uid import generate_uid

    files = _phantom_axial_files(phantom_ct)
    copy_shuffled(files, tmp_path / "dup", 0)
    twin = pydicom.dcmread(files[0])  # another instance at the same position (not a repeated file)
    twin.SOPInstanceUID = twin.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    twin.save_as(tmp_path / "dup" / "twin")
    with pytest.raises(InputError, match="two slices at one position"):
        load_dicom_study(tmp_path / "dup")
    copy_shuffled(files, tmp_path / "size", 1)
    victim = sorted((tmp_path / "size").iterdir())[3]
    ds = pydicom.dcmread(victim)
    ds.Rows, ds.Columns = 48, 48
    ds.PixelData = np.zeros((48, 48), np.uint16).tobytes()
    ds.save_as(victim)
    # the odd-sized slice is a stack of its own (too small to choose); the rest has a hole where it was
    stacks, _ = scan_series(tmp_path / "size")
    assert sorted(s.n_frames for s in stacks) == [1, len(files) - 1]
    with pytest.raises(InputError, match="uneven slice spacing .*; 1 file of this series set apart for another orientation or size"):
        load_dicom_study(tmp_path / "size")
    # stacking slices directly still checks their size
    slices = [sl for f in sorted((tmp_path / "size").iterdir()) for sl in slices_from_file(f)[0]]
    with pytest.raises(InputError, match="slice size"):
        volume_from_slices(slices)


def test_junk_and_truncated_files(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(InputError, match="no DICOM image files"):
        load_dicom_study(tmp_path / "junk")
    (tmp_path / "trunc").mkdir()
    data = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
    for i in range(10):  # a series whose pixel data is cut short
        (tmp_path / "trunc" / f"{i}.dcm").write_bytes(data[: len(data) - 5000])
    with pytest.raises(InputError):
        load_dicom_study(tmp_path / "trunc", ANY)


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
     "MR_small_implicit.dcm", "MR_small_expb.dcm", "MR_small_padded.dcm"],
)
def test_compressed_and_legacy_encodings_decode_to_the_same_volume(name):
    """pydicom's real MR_small in every encoding (pylibjpeg decoders) equals the uncompressed file."""
    ref = volume_from_slices(slices_from_file(TESTDATA / "MR_small.dcm")[0])
    got = volume_from_slices(slices_from_file(TESTDATA / name)[0])
    np.testing.assert_array_equal(got.array, ref.array)
    np.testing.assert_allclose(got.affine, ref.affine)


def test_missing_slice_resampled_by_policy(phantom_ct, tmp_path):
    files = _phantom_axial_files(phantom_ct)
    full, _ = load_dicom_study(next(f for f in sorted((phantom_ct / "images").iterdir()) if files[0].is_relative_to(f)))
    by_z = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    gap = len(by_z) // 2
    copy_shuffled([f for f in by_z if f != by_z[gap]], tmp_path / "gap", 3)
    vol, reason = load_dicom_study(tmp_path / "gap", SeriesSelection(on_uneven_spacing="resample"))
    assert "resampled to 40" in reason
    assert vol.array.shape == full.array.shape
    np.testing.assert_allclose(vol.affine, full.affine, atol=1e-6)
    kept = [k for k in range(40) if k != gap]
    np.testing.assert_array_equal(vol.array[:, :, kept], full.array[:, :, kept])  # real slices untouched
    expected = 0.5 * (full.array[:, :, gap - 1] + full.array[:, :, gap + 1])
    np.testing.assert_allclose(vol.array[:, :, gap], expected, atol=1e-3)  # the gap is the neighbours' mean


def test_enhanced_ct_multiframe_matches_dcm2niix(tmp_path):
    """pydicom-data's real Enhanced CT object: geometry from the per-frame functional groups."""
    src = Path(get_testdata_file("eCT_Supplemental.dcm", download=False))
    assert pydicom.dcmread(src, stop_before_pixels=True).SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1"
    folder = tmp_path / "ect"
    folder.mkdir()
    shutil.copy(src, folder / "x")
    with pytest.raises(InputError, match="image type DERIVED"):  # the default policy skips derived images
        load_dicom_study(folder, SeriesSelection(min_slices=2))
    vol, reason = load_dicom_study(folder, SeriesSelection(min_slices=2, skip_image_types=["LOCALIZER"]))
    assert vol.array.shape == (512, 512, 2) and vol.spacing[2] == pytest.approx(10.0)
    assert vol.array.min() == -1024  # rescale from the functional groups to HU
    assert_matches_dcm2niix(vol, folder, tmp_path)


def _tilted_series(folder: Path, tilt: float, linear_in_rows: bool) -> np.ndarray:
    """A 20-slice phantom written with gantry tilt; returns its ``(Z, Y, X)`` HU (smooth, known)."""
    from pydicom.uid import generate_uid

    from medalign.synth.dicom_writer import FakePatient, write_ct_series

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:20, 0:64, 0:64].astype(float)
    rows_term = 0.0 if linear_in_rows else ((y - 30) / 10.0) ** 2
    hu = -800 + 900 * np.exp(-(((x - 32) / 14.0) ** 2 + rows_term + ((z - 10) / 7.0) ** 2)) + 2.0 * y
    write_ct_series(hu, (2.5, 0.8, 0.8), (-25.0, -20.0, 100.0), folder, FakePatient.random(rng), generate_uid(), rng,
                    gantry_tilt_deg=tilt)
    return hu


@pytest.mark.parametrize("tilt", [15.0, -15.0, 7.0])
def test_gantry_tilt_corrected_like_dcm2niix(tmp_path, tilt):
    """dcm2niix's ``*_Tilt_1.nii`` (slices shifted back onto an orthogonal grid, widened to hold them
    all) is the reference: same shape and affine within 0.01 mm; values within 0.5 HU plus what
    dcm2niix's own sub-pixel placement costs on this 2 HU/pixel ramp (it lands up to 0.4 pixel off
    for negative tilts: the next test holds medalign to the phantom's formula instead); at the
    slices' edges dcm2niix keeps or drops a partial pixel by its own rule: one pixel at most."""
    folder = tmp_path / "dcm"
    _tilted_series(folder, tilt, linear_in_rows=True)
    vol, reason = load_dicom_study(folder, SeriesSelection(min_slices=2))
    assert f"gantry tilt {abs(tilt):.1f} deg corrected" in reason
    assert vol.array.shape[1] > 64  # widened to hold every shifted slice
    ref = dcm2niix_canonical(folder, tmp_path)
    mine = nib.as_closest_canonical(nib.Nifti1Image(vol.array, vol.affine))
    assert mine.shape == ref.shape
    np.testing.assert_allclose(mine.affine, ref.affine, atol=0.01)
    a, b = np.asarray(mine.dataobj), np.asarray(ref.dataobj, dtype=np.float64)
    fill = a.min()
    a_data, b_data = a > fill + 0.5, b > fill + 0.5
    both = a_data & b_data
    assert both.mean() > 0.7
    assert np.abs(a - b)[both].max() <= 0.5 + 2.0 * 0.4
    assert (a_data != b_data).sum(axis=1).max() <= 1  # per column of each slice: one edge pixel at most
    with pytest.raises(InputError, match="gantry tilt"):
        load_dicom_study(folder, SeriesSelection(min_slices=2, on_gantry_tilt="reject"))


@pytest.mark.parametrize("tilt", [15.0, -15.0])
def test_gantry_tilt_correction_puts_each_value_where_the_anatomy_is(tmp_path, tilt):
    """Against the phantom's own formula at every output voxel's world position (independent of
    dcm2niix, which lands up to 0.1 pixel off for one tilt direction): linear interpolation error only."""
    folder = tmp_path / "dcm"
    _tilted_series(folder, tilt, linear_in_rows=False)
    vol, _ = load_dicom_study(folder, SeriesSelection(min_slices=2))
    origins = sorted((np.asarray(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient, float) for p in folder.iterdir()),
                     key=lambda p: p[2])
    idx = np.stack(np.meshgrid(*map(np.arange, vol.array.shape), indexing="ij"), -1).reshape(-1, 3)
    lps = (vol.affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T * [-1, -1, 1]
    k = np.round((lps[:, 2] - origins[0][2]) / 2.5).astype(int)
    rel = lps - np.asarray(origins)[k]
    xs, ys = rel[:, 0] / 0.8, rel[:, 1] / 0.8  # the source slice's pixel coordinates of this voxel
    truth = -800 + 900 * np.exp(-(((xs - 32) / 14.0) ** 2 + ((ys - 30) / 10.0) ** 2 + ((k - 10) / 7.0) ** 2)) + 2.0 * ys
    inside = (xs >= -1e-3) & (xs <= 63 + 1e-3) & (ys >= -1e-3) & (ys <= 63 + 1e-3)
    values = vol.array.reshape(-1)
    assert inside.mean() > 0.7
    assert np.abs(values[inside] - truth[inside]).max() < 2.5  # linear interpolation of a curved blob
    assert np.all(values[~inside] == values.min())  # outside every slice: the fill value


def test_repeated_instance_files_are_read_once(phantom_ct, tmp_path):
    """PACS exports repeat instances (same SOPInstanceUID under another name): one copy is read."""
    files = _phantom_axial_files(phantom_ct)
    copy_shuffled(files, tmp_path / "once", 0)
    reference, _ = load_dicom_study(tmp_path / "once")
    copy_shuffled(files + files[:5], tmp_path / "repeated", 1)
    volume, reason = load_dicom_study(tmp_path / "repeated")
    assert reason.endswith("; 5 files repeating an instance read once")
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_array_equal(volume.affine, reference.affine)
    _, skipped = scan_series(tmp_path / "repeated")
    assert sum("same SOP instance as" in why for _, why in skipped) == 5
    # a de-identification tool that gave every slice one SOPInstanceUID: positions tell them apart
    (tmp_path / "one_uid").mkdir()
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
        ds.save_as(tmp_path / "one_uid" / f"{n}.dcm")
    volume, reason = load_dicom_study(tmp_path / "one_uid")
    np.testing.assert_array_equal(volume.array, reference.array)
    assert "repeating an instance" not in reason


@pytest.mark.parametrize(
    ("iop", "plane"),
    [((1, 0, 0, 0, 1, 0), "axial"), ((1, 0, 0, 0, 0, -1), "coronal"), ((0, 1, 0, 0, 0, -1), "sagittal"),
     ((1, 0, 0, 0, np.cos(np.radians(25)), -np.sin(np.radians(25))), "axial"),  # gantry tilted 25 degrees
     ((1, 0, 0, 0, np.cos(np.radians(45)), -np.sin(np.radians(45))), "oblique")],
)
def test_acquisition_plane_from_the_slice_normal(iop, plane):
    from medalign.io.volume import acquisition_plane

    assert acquisition_plane(iop) == plane


def test_series_choice_full_coverage_first_then_thin_slices(tmp_path):
    """One study, five series: the policy takes the full-coverage axial series with the thinnest
    slices and says in its reason why each other one lost."""
    from pydicom.uid import generate_uid

    from medalign.synth.dicom_writer import FakePatient, write_ct_series

    rng = np.random.default_rng(1)
    patient, study = FakePatient.random(rng), generate_uid()
    study_dir = tmp_path / "study"

    def series(name, n, dz, **kw):
        hu = rng.normal(0.0, 50.0, size=(n, 16, 16))
        return write_ct_series(hu, (dz, 1.0, 1.0), (0.0, 0.0, 0.0), study_dir / name, patient, study, rng, description=name, **kw)

    want = series("thin_full", 41, 2.5)  # 100 mm at 2.5 mm
    series("thick_full", 21, 5.0)  # 100 mm at 5 mm
    series("thinner_partial", 41, 1.25)  # 50 mm at 1.25 mm, same slice count as the winner
    series("coronal", 60, 1.0, orientation=(1, 0, 0, 0, 0, -1))  # a reformat stored as ORIGINAL
    series("many_thin_slices_half", 80, 0.625)  # most slices of all, still half the coverage
    found, _ = scan_series(study_dir)
    by_name = {s.description: s for s in found}
    assert by_name["coronal"].plane == "coronal" and by_name["thin_full"].plane == "axial"
    assert by_name["thin_full"].coverage_mm == pytest.approx(100.0) and by_name["thin_full"].slice_step == pytest.approx(2.5)

    chosen, reason = select_series(found, SeriesSelection())
    assert sorted(chosen.files) == sorted(want)
    assert f"series {chosen.name}: CT axial ORIGINAL/PRIMARY/AXIAL, 41 slices at 2.50 mm over 100 mm" in reason
    assert f"{by_name['thick_full'].name}: CT axial" in reason and "thicker slices" in reason
    assert f"{by_name['thinner_partial'].name}: partial coverage (50 of 100 mm)" in reason
    assert f"{by_name['many_thin_slices_half'].name}: partial coverage (49 of 100 mm)" in reason
    assert f"{by_name['coronal'].name}: coronal plane" in reason

    coronal, _ = select_series(found, SeriesSelection(planes=["coronal"]))
    assert coronal is by_name["coronal"]
    # a looser coverage rule admits the half-coverage series, and then the thinnest slices win
    loose, _ = select_series(found, SeriesSelection(min_coverage_fraction=0.4))
    assert loose is by_name["many_thin_slices_half"]
    vol, _ = load_dicom_study(study_dir)
    assert vol.array.shape == (16, 16, 41)


def test_series_policy_refuses_unknown_plane():
    from medalign.errors import ConfigError

    with pytest.raises(ConfigError, match="planes: axil not among"):
        SeriesSelection(planes=["axil"]).validate("series")
    with pytest.raises(ConfigError, match="min_coverage_fraction"):
        SeriesSelection(min_coverage_fraction=0.0).validate("series")


def test_localizer_filed_in_the_axial_series_becomes_its_own_stack(phantom_ct, tmp_path):
    """Some scanners file the scout under the axial series' SeriesInstanceUID: the series splits into
    stacks by geometry (as dcm2niix does), the localizer stack is skipped, the axial one matches dcm2niix."""
    folder = next(f for f in sorted((phantom_ct / "images").iterdir()) if len(scan_series(f)[0]) == 2)
    series, _ = scan_series(folder)
    axial = max(series, key=lambda s: s.n_frames)
    scout = min(series, key=lambda s: s.n_frames)
    merged = tmp_path / "merged"
    merged.mkdir()
    for f in axial.files:
        shutil.copy(f, merged / f.name)
    for f in scout.files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = axial.series_uid
        ds.save_as(merged / f"scout_{f.name}")
    stacks, _ = scan_series(merged)
    assert len(stacks) == 2 and {s.series_uid for s in stacks} == {axial.series_uid}
    assert [s.stack for s in stacks] == [0, 1] and stacks[1].key == f"{axial.key}.1"
    volume, reason = load_dicom_study(merged)
    assert f"{axial.key}.1: image type ORIGINAL/PRIMARY/LOCALIZER" in reason
    reference, _ = load_dicom_study(folder)
    np.testing.assert_array_equal(volume.array, reference.array)
    assert_matches_dcm2niix(volume, merged, tmp_path)


@pytest.mark.parametrize("damage", ["no_positions", "one_position", "zero_orientation"])
def test_oct_frames_without_usable_positions_stack_in_frame_order_by_policy(tmp_path, damage):
    """Some OCT exports leave the per-frame positions out, repeat one, or zero the orientation: the
    default refuses such an object; ``frame_order`` stacks its frames by InStackPositionNumber at
    SliceThickness and gives the volume the intact object has."""
    from medalign.synth.writer import synthesize

    synthesize(tmp_path / "oct", "oct", studies=1, seed=4)
    intact_dir = next((tmp_path / "oct" / "images").iterdir())
    policy = SeriesSelection(modalities=["OPT"], planes=[], on_missing_frame_positions="frame_order")
    intact, _ = load_dicom_study(intact_dir, policy)
    src = next(intact_dir.rglob("*.dcm"))
    ds = pydicom.dcmread(src)
    frames = ds.PerFrameFunctionalGroupsSequence
    # store the frames shuffled, each keeping its InStackPositionNumber
    order = np.random.default_rng(0).permutation(len(frames))
    pixels = ds.pixel_array[order]
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([frames[int(i)] for i in order])
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for fg in ds.PerFrameFunctionalGroupsSequence:
        if damage == "no_positions":
            del fg.PlanePositionSequence
        elif damage == "one_position":
            fg.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 0.0]
    if damage == "zero_orientation":
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [0.0] * 6
        for fg in ds.PerFrameFunctionalGroupsSequence:
            fg.PlanePositionSequence[0].ImagePositionPatient = [0.0, 0.0, 0.0]
    damaged_dir = tmp_path / "damaged"
    damaged_dir.mkdir()
    ds.save_as(damaged_dir / "oct.dcm")
    with pytest.raises(InputError, match="oct.dcm: frames lack distinct ImagePositionPatient"):
        load_dicom_study(damaged_dir, SeriesSelection(modalities=["OPT"], planes=[]))
    volume, reason = load_dicom_study(damaged_dir, policy)
    assert "frames without usable positions stacked in frame order" in reason
    np.testing.assert_array_equal(volume.array, intact.array)
    np.testing.assert_allclose(volume.affine, intact.affine, atol=1e-9)


def test_absurd_frame_count_in_a_header_is_refused_without_walking_it(tmp_path):
    """A corrupt NumberOfFrames (2^31 - 1 on a 128 x 128 image) is reported, not iterated or allocated."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.NumberOfFrames = 2**31 - 1
    (tmp_path / "bad").mkdir()
    ds.save_as(tmp_path / "bad" / "x.dcm")
    series, _ = scan_series(tmp_path / "bad")
    assert series[0].n_frames == 2**31 - 1
    with pytest.raises(InputError, match="x.dcm: absurd dimensions 128x128x2147483647"):
        load_dicom_study(tmp_path / "bad", ANY)


def test_a_scanned_series_loads_again_after_its_headers_were_handed_over(phantom_ct):
    """The scan's headers are reused for the first load and released with their pixel data; a
    second load of the same series reads the files again and gives the same volume."""
    from medalign.io.dicom import load_series

    folder = sorted((phantom_ct / "images").iterdir())[0]
    series, _ = scan_series(folder)
    axial = max(series, key=lambda s: s.n_frames)
    assert len(axial.headers) == len(axial.files)
    first = load_series(axial)
    assert axial.headers == []
    second = load_series(axial)
    np.testing.assert_array_equal(first.array, second.array)
    np.testing.assert_array_equal(first.affine, second.affine)
