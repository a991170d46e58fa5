"""The OCT phantom draws what its labels say, where the anatomy says: each finding switched on alone
in the same eye changes the reflectivity only where that finding lives, and eyes differ."""

from __future__ import annotations

import numpy as np
import pytest

from medalign.synth.oct import OCT_FINDINGS, OCT_SHAPE, acquire_oct, make_oct_case, oct_reflectivity

NONE = {f: 0 for f in OCT_FINDINGS}


def eye(seed: int, **on: int) -> np.ndarray:
    """The reflectivity of eye ``seed`` with the findings named in ``on`` (underscores for spaces)."""
    return oct_reflectivity(np.random.default_rng(seed), {**NONE, **{k.replace("_", " "): v for k, v in on.items()}})


def surfaces(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per A-scan ``(frames, cols)``: the first row of tissue (the inner surface) and the RPE's first row."""
    tissue = img > 0.06
    inner = tissue.argmax(axis=1)
    rpe = (img >= 0.95).argmax(axis=1)
    return inner, rpe


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_finding_changes_only_its_own_place(seed: int) -> None:
    base = eye(seed)
    inner, rpe = surfaces(base)
    rows = np.arange(OCT_SHAPE[1])[None, :, None]

    cysts = eye(seed, intraretinal_cysts=1)
    changed = cysts != base
    assert changed.sum() > 50  # a few cysts of a few rows, columns and B-scans
    assert np.all(cysts[changed] < base[changed])  # dark holes
    inside = (rows > inner[:, None, :]) & (rows < rpe[:, None, :])
    assert inside[changed].all()  # inside the retina

    drusen = eye(seed, drusen=1)
    _, rpe_d = surfaces(drusen)
    assert np.all(rpe_d <= rpe) and (rpe - rpe_d).max() >= 4  # the RPE is lifted, never lowered

    fluid = eye(seed, subretinal_fluid=1)
    dark_under_retina = (fluid <= 0.08) & (rows < rpe[:, None, :]) & (rows > inner[:, None, :])
    assert dark_under_retina.sum() > 20 and not ((base <= 0.08) & (rows < rpe[:, None, :]) & (rows > inner[:, None, :])).any()

    erm = eye(seed, epiretinal_membrane=1)
    inner_e, _ = surfaces(erm)
    assert np.all(inner_e <= inner) and (inner - inner_e).max() >= 3  # the inner retina thickens upward
    bright_surface = erm[np.arange(OCT_SHAPE[0])[:, None], inner_e, np.arange(OCT_SHAPE[2])[None, :]] == 1.0
    assert 0 < bright_surface.mean() < 1  # a partial membrane, not the whole surface


def test_same_eye_whatever_findings_are_on() -> None:
    """Switching on a finding leaves the eye (thickness, tilt, layers) as it was elsewhere."""
    base, cysts = eye(5), eye(5, intraretinal_cysts=1)
    far = np.ones(OCT_SHAPE, bool)
    far[:, :, OCT_SHAPE[2] // 4 - 9: 3 * OCT_SHAPE[2] // 4 + 9] = False  # cysts are placed in the middle half
    np.testing.assert_array_equal(base[far], cysts[far])


def test_eyes_and_devices_differ() -> None:
    thickness = []
    for seed in range(12):
        inner, rpe = surfaces(eye(seed))
        thickness.append(np.median(rpe - inner))
    assert max(thickness) / min(thickness) > 1.2  # ±20% thickness and the pit's depth vary by eye
    same_eye = eye(0)
    devices = [acquire_oct(same_eye, np.random.default_rng(s)) for s in range(6)]
    assert all(d.dtype == np.uint8 and d.shape == OCT_SHAPE for d in devices)
    retina_means = [float(d[same_eye == 0.75].mean()) for d in devices]  # the same tissue under each device
    assert max(retina_means) - min(retina_means) > 15  # gain and display curve differ (grey levels of 255)


def test_labels_are_drawn_at_the_prevalence_or_given() -> None:
    rng = np.random.default_rng(0)
    drawn = np.array([[make_oct_case(rng, prevalence=0.4).labels[f] for f in OCT_FINDINGS] for _ in range(30)])
    assert 0.2 < drawn.mean() < 0.6
    given = make_oct_case(np.random.default_rng(1), labels={**NONE, "drusen": 1})
    assert given.labels == {**NONE, "drusen": 1}


def test_lesion_masks_lie_over_what_was_drawn_on_the_converted_scan(tmp_path):
    """``synth --modality oct`` writes ``lesions/<study>/<finding>.nii.gz`` for each finding its labels
    say is present, on the grid ``medalign convert`` gives the study; on that converted scan the fluid
    and cyst masks are darker than the tissue around them and the membrane brighter."""
    import csv

    import nibabel as nib
    from scipy.ndimage import binary_dilation

    from medalign.cli.main import main as cli

    out = tmp_path / "ph"
    assert cli(["synth", "--out", str(out), "--modality", "oct", "--studies", "14", "--seed", "3"]) == 0
    checked = set()
    for row in csv.DictReader(open(out / "labels.csv", encoding="utf-8")):
        sid = row["study_id"]
        present = {f for f in OCT_FINDINGS if row[f] == "1"}
        drawn = {p.name[: -len(".nii.gz")].replace("_", " ") for p in (out / "lesions" / sid).glob("*.nii.gz")}
        assert drawn == present, sid
        if not present:
            continue
        assert cli(["convert", str(out / "images" / sid), str(tmp_path / f"{sid}.nii.gz")]) == 0
        scan = nib.load(tmp_path / f"{sid}.nii.gz")
        image = scan.get_fdata()
        for finding in present:
            lesion = nib.load(out / "lesions" / sid / f"{finding.replace(' ', '_')}.nii.gz")
            assert lesion.shape == scan.shape and np.allclose(lesion.affine, scan.affine)
            inside = lesion.get_fdata() > 0.5
            assert inside.any()
            shell = binary_dilation(inside, iterations=2) & ~inside
            if finding in ("subretinal fluid", "intraretinal cysts"):
                assert image[inside].mean() < image[shell].mean() - 10, (sid, finding)
            elif finding == "epiretinal membrane":
                assert image[inside].mean() > image[shell].mean() + 10, (sid, finding)
            checked.add(finding)
    assert {"subretinal fluid", "intraretinal cysts", "epiretinal membrane"} <= checked
