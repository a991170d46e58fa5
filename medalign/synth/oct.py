"""Retinal OCT phantom: a macular cube of B-scans with retinal layers, foveal pit, RPE and
choroid under speckle, eyes and devices that differ, and findings of realistic size drawn at random
(drusen, subretinal fluid, intraretinal cysts, epiretinal membrane)."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.ndimage import gaussian_filter

OCT_FINDINGS = ("drusen", "subretinal fluid", "intraretinal cysts", "epiretinal membrane")
#: (frames, depth rows, lateral columns) and mm spacing (between B-scans, axial, lateral)
OCT_SHAPE = (32, 128, 128)
OCT_SPACING = (0.19, 0.016, 0.047)


@dataclasses.dataclass
class OCTCase:
    """One phantom OCT cube ``volume`` (frames, rows, cols) uint8, its labels, and where each present
    finding was drawn (``masks``: finding -> bool ``(frames, rows, cols)``)."""

    volume: np.ndarray
    labels: dict[str, int]
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def make_oct_case(rng: np.random.Generator, prevalence: float = 0.4, labels: dict[str, int] | None = None) -> OCTCase:
    """Draw one macular OCT cube with each finding present with probability ``prevalence`` (or as
    ``labels`` says): an eye's reflectivity (:func:`oct_reflectivity`) seen by a device
    (:func:`acquire_oct`)."""
    labels = labels if labels is not None else {f: int(rng.random() < prevalence) for f in OCT_FINDINGS}
    masks: dict[str, np.ndarray] = {}
    volume = acquire_oct(oct_reflectivity(rng, labels, masks), rng)
    return OCTCase(volume=volume, labels=dict(labels), masks=masks)


def oct_reflectivity(rng: np.random.Generator, labels: dict[str, int], masks: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Noise-free reflectivity ``(frames, rows, cols)`` in [0, 1] of one eye with the findings ``labels`` marks.

    Eyes differ as real ones do: retinal thickness (±20%), layer boundaries, an off-centre fovea, a
    tilted and bowed scan. Findings are of realistic size at 16 µm a row and 47 µm a column: drusen
    lift the RPE 5-10 rows (80-160 µm) off Bruch's membrane over a few columns and B-scans, fluid
    pockets and cysts are a few rows high, and an epiretinal membrane is a thin, partial bright line
    over a thickened inner retina. The eye is drawn first and each finding from its own stream, so the same ``rng`` state
    gives the same eye whichever findings are switched on. ``masks``, when given, receives each drawn
    finding's voxels (bool, same shape): the lifted drusen material, the fluid under the photoreceptors,
    the cysts, the membrane line over its thickening."""
    nf, nd, nl = OCT_SHAPE
    fy, fx = np.meshgrid(np.linspace(-1, 1, nf), np.linspace(-1, 1, nl), indexing="ij")  # (frames, lateral)
    cy, cx = rng.uniform(-0.3, 0.3, size=2)  # off-centre fixation
    r2 = ((fy - cy) / 0.9) ** 2 + (fx - cx) ** 2
    tilt_f, tilt_l, bow = rng.uniform(-8, 8), rng.uniform(-10, 10), rng.uniform(0, 10)
    rpe = 84 + rng.uniform(-6, 6) + tilt_f * fy + tilt_l * fx - bow * (fx**2 + 0.5 * fy**2)
    thickness = rng.uniform(0.8, 1.2) * (40 - rng.uniform(10, 16) * np.exp(-r2 / rng.uniform(0.03, 0.07)))
    bounds = np.sort(np.array([0.12, 0.35, 0.5, 0.6]) + rng.uniform(-0.03, 0.03, size=4))  # layer boundaries vary by eye
    streams = {f: np.random.default_rng(seed) for f, seed in zip(OCT_FINDINGS, rng.integers(0, 2**63, size=len(OCT_FINDINGS)))}
    ilm = rpe - 6 - thickness
    thickening = np.zeros_like(ilm)
    if labels.get("epiretinal membrane"):
        g = streams["epiretinal membrane"]
        py, px = g.uniform(-0.5, 0.5, size=2)
        patch = np.exp(-(((fy - py) / g.uniform(0.3, 0.6)) ** 2 + ((fx - px) / g.uniform(0.3, 0.6)) ** 2))
        thickening = g.uniform(4, 8) * patch
        ilm = ilm - thickening - g.uniform(0.5, 2.0) * np.sin(fx * 25 + g.uniform(0, 6)) * patch
    drusen_lift = np.zeros_like(ilm)
    if labels.get("drusen"):
        g = streams["drusen"]
        for _ in range(int(g.integers(4, 9))):
            py, px = g.uniform(-0.7, 0.7, size=2)
            drusen_lift += g.uniform(5, 10) * np.exp(-(((fy - py) / g.uniform(0.12, 0.18)) ** 2 + ((fx - px) / g.uniform(0.06, 0.1)) ** 2))
    srf = np.zeros_like(ilm)
    if labels.get("subretinal fluid"):
        g = streams["subretinal fluid"]
        py, px = cy + g.uniform(-0.3, 0.3), cx + g.uniform(-0.3, 0.3)
        pocket = ((fy - py) / 0.9) ** 2 + (fx - px) ** 2
        srf = g.uniform(3, 9) * np.clip(1 - pocket / g.uniform(0.03, 0.12), 0, None) ** 0.5
    rpe_top = rpe - drusen_lift
    ellipsoid = rpe_top - 6 - srf  # photoreceptor line is lifted by fluid
    depth = np.arange(nd)[None, :, None].astype(float)
    ILM, RPE, ELL, BM = (v[:, None, :] for v in (ilm, rpe_top, ellipsoid, rpe + 4))  # BM: Bruch's membrane, not lifted
    rel = (depth - ILM) / np.maximum(ELL - ILM, 1)  # 0 at the inner surface, 1 at the photoreceptors
    img = np.full((nf, nd, nl), 0.05)
    retina = (depth >= ILM) & (depth < ELL)
    layer = np.select([rel < bounds[0], rel < bounds[1], rel < bounds[2], rel < bounds[3], rel < 1.0],
                      [0.75, 0.45, 0.2, 0.5, 0.22], default=0.2)
    img = np.where(retina, layer, img)
    img = np.where((depth >= ELL) & (depth < ELL + 2), 0.7, img)  # ellipsoid zone
    fluid = (depth >= ELL + 2) & (depth < RPE) & (srf[:, None, :] > 0.5)
    img = np.where((depth >= ELL + 2) & (depth < RPE), np.where(fluid, 0.05, 0.3), img)
    img = np.where((depth >= RPE) & (depth < RPE + 4), 0.95, img)  # RPE
    img = np.where((depth >= RPE + 4) & (depth < BM), 0.5, img)  # drusen material under the lifted RPE
    img = np.where((depth >= BM) & (depth < BM + 26), 0.4 + 0.1 * np.sin(depth / 2.0), img)  # choroid
    drawn = {"drusen": (depth >= RPE) & (depth < BM) & (drusen_lift[:, None, :] > 1.0), "subretinal fluid": fluid}
    if labels.get("intraretinal cysts"):
        g = streams["intraretinal cysts"]
        zf, zd, zl = np.meshgrid(np.arange(nf), np.arange(nd), np.arange(nl), indexing="ij")
        cysts = np.zeros(img.shape, bool)
        for _ in range(int(g.integers(3, 8))):
            k, i = int(g.integers(nf // 4, 3 * nf // 4)), int(g.integers(nl // 4, 3 * nl // 4))
            d = float(ILM[k, 0, i] + g.uniform(0.45, 0.6) * (ELL[k, 0, i] - ILM[k, 0, i]))
            rd, rl, rf = g.uniform(3, 5), g.uniform(4, 8), g.uniform(1.5, 3)
            cysts |= (((zd - d) / rd) ** 2 + ((zl - i) / rl) ** 2 + ((zf - k) / rf) ** 2 <= 1) & retina
        img[cysts] = 0.03
        drawn["intraretinal cysts"] = cysts
    if labels.get("epiretinal membrane"):
        membrane = (depth >= ILM - 2) & (depth < ILM) & (thickening[:, None, :] > 0.8)
        img = np.where(membrane, 1.0, img)
        drawn["epiretinal membrane"] = membrane
    if masks is not None:
        masks.update({f: np.broadcast_to(m, img.shape).copy() for f, m in drawn.items() if labels.get(f)})
    return img


def acquire_oct(reflectivity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What one device makes of ``reflectivity`` ``(frames, rows, cols)``: the optics' blur, speckle of
    varying statistics, gain, a noise floor and the vendor's log display curve; uint8, same shape."""
    img = gaussian_filter(reflectivity, sigma=(0.3, 0.8, 0.8))
    speckle = rng.gamma(shape := rng.uniform(2.5, 6.0), 1 / shape, size=img.shape)  # multiplicative speckle
    gain = rng.uniform(0.7, 1.3)  # vendor/acquisition gain
    signal = np.clip(img * speckle * gain + rng.uniform(0.0, 0.06) * rng.random(img.shape), 0, None)  # and a noise floor
    compression = rng.uniform(10.0, 40.0)  # each vendor's log display curve
    return np.clip(255 * np.log1p(compression * signal) / np.log1p(compression * 1.3), 0, 255).astype(np.uint8)
