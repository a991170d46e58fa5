"""Retinal OCT phantom: a macular cube of B-scans with retinal layers, foveal pit, RPE and
choroid under speckle, and findings drawn at random (drusen, subretinal fluid, intraretinal
cysts, epiretinal membrane)."""

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
    """One phantom OCT cube ``volume`` (frames, rows, cols) uint8 and its labels."""

    volume: np.ndarray
    labels: dict[str, int]


def make_oct_case(rng: np.random.Generator, prevalence: float = 0.4) -> OCTCase:
    """Draw one macular OCT cube with each finding present with probability ``prevalence``."""
    nf, nd, nl = OCT_SHAPE
    labels = {f: int(rng.random() < prevalence) for f in OCT_FINDINGS}
    fy, fx = np.meshgrid(np.linspace(-1, 1, nf), np.linspace(-1, 1, nl), indexing="ij")  # (frames, lateral)
    cy, cx = rng.uniform(-0.15, 0.15, size=2)
    r2 = ((fy - cy) / 0.9) ** 2 + (fx - cx) ** 2
    ilm = 30 + 14 * np.exp(-r2 / 0.05) + rng.uniform(-3, 3)  # foveal pit pushes the inner surface down
    rpe = np.full_like(ilm, 92.0) + 2 * fy + rng.uniform(-3, 3)
    thickening = np.zeros_like(ilm)
    if labels["epiretinal membrane"]:
        thickening = 6 * np.exp(-r2 / 0.4)
        ilm = ilm - thickening - 1.5 * np.sin(fx * 25 + rng.uniform(0, 6)) * np.exp(-r2 / 0.4)
    drusen_lift = np.zeros_like(ilm)
    if labels["drusen"]:
        for _ in range(int(rng.integers(4, 9))):
            py, px = rng.uniform(-0.8, 0.8, size=2)
            drusen_lift += rng.uniform(4, 8) * np.exp(-(((fy - py) / 0.18) ** 2 + ((fx - px) / 0.08) ** 2))
    srf = np.zeros_like(ilm)
    if labels["subretinal fluid"]:
        srf = rng.uniform(8, 14) * np.clip(1 - r2 / rng.uniform(0.15, 0.3), 0, None) ** 0.5
    rpe_top = rpe - drusen_lift
    ellipsoid = rpe_top - 6 - srf  # photoreceptor line is lifted by fluid
    depth = np.arange(nd)[None, :, None].astype(float)
    ILM, RPE, ELL = (v[:, None, :] for v in (ilm, rpe_top, ellipsoid))
    rel = (depth - ILM) / np.maximum(ELL - ILM, 1)  # 0 at the inner surface, 1 at the photoreceptors
    img = np.full((nf, nd, nl), 0.05)
    retina = (depth >= ILM) & (depth < ELL)
    layer = np.select(
        [rel < 0.12, rel < 0.35, rel < 0.5, rel < 0.6, rel < 1.0],
        [0.75, 0.45, 0.2, 0.5, 0.22],
        default=0.2,
    )
    img = np.where(retina, layer, img)
    img = np.where((depth >= ELL) & (depth < ELL + 2), 0.7, img)  # ellipsoid zone
    img = np.where((depth >= ELL + 2) & (depth < RPE), np.where(srf[:, None, :] > 0.5, 0.03, 0.3), img)
    img = np.where((depth >= RPE) & (depth < RPE + 4), 0.95, img)  # RPE
    img = np.where((depth >= RPE + 4) & (depth < RPE + 30), 0.4 + 0.1 * np.sin(depth / 2.0), img)  # choroid
    if labels["drusen"]:
        drusen_body = (depth >= RPE) & (depth < RPE + drusen_lift[:, None, :]) & (drusen_lift[:, None, :] > 1)
        img = np.where(drusen_body, 0.6, img)
    if labels["intraretinal cysts"]:
        zf, zd, zl = np.meshgrid(np.arange(nf), np.arange(nd), np.arange(nl), indexing="ij")
        for _ in range(int(rng.integers(3, 8))):
            k, i = int(rng.integers(nf // 4, 3 * nf // 4)), int(rng.integers(nl // 4, 3 * nl // 4))
            d = float(ILM[k, 0, i] + 0.55 * (ELL[k, 0, i] - ILM[k, 0, i]))
            rd, rl, rf = rng.uniform(3, 6), rng.uniform(4, 9), rng.uniform(1.5, 3)
            img[((zd - d) / rd) ** 2 + ((zl - i) / rl) ** 2 + ((zf - k) / rf) ** 2 <= 1] = 0.03
    if labels["epiretinal membrane"]:
        img = np.where((depth >= ILM - 2) & (depth < ILM) & (thickening[:, None, :] > 1), 1.0, img)
    img = gaussian_filter(img, sigma=(0.3, 0.8, 0.8))
    speckle = rng.gamma(4.0, 1 / 4.0, size=img.shape)  # multiplicative speckle
    gain = rng.uniform(0.8, 1.2)  # vendor/acquisition gain
    signal = np.clip(img * speckle * gain, 0, None)
    volume = np.clip(255 * np.log1p(20 * signal) / np.log1p(20 * 1.3), 0, 255).astype(np.uint8)
    return OCTCase(volume=volume, labels=labels)
