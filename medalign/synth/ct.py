"""Chest-CT phantom: body, fat, lungs, heart, aorta, spine and ribs in Hounsfield units, with
findings drawn at random (pleural effusion, cardiomegaly, lung nodule, emphysema,
consolidation) and a matching free-text report."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.ndimage import gaussian_filter

CT_FINDINGS = ("pleural effusion", "cardiomegaly", "lung nodule", "emphysema", "consolidation")
LOBES = {
    "right": ["right upper lobe", "right middle lobe", "right lower lobe"],
    "left": ["left upper lobe", "left lower lobe", "lingula"],
}


@dataclasses.dataclass
class CTGrid:
    """Axial grid of the phantom: ``shape`` (Z, Y, X) and spacing (dz, dy, dx) in mm, LPS axes."""

    shape: tuple[int, int, int] = (40, 96, 96)
    spacing: tuple[float, float, float] = (7.5, 4.0, 4.0)

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) mm coordinates centred on the chest."""
        axes = [(np.arange(n) - (n - 1) / 2) * d for n, d in zip(self.shape, self.spacing)]
        z, y, x = axes
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def origin_lps(self) -> tuple[float, float, float]:
        """LPS position of voxel (0, 0, 0)."""
        z, y, x = [-(n - 1) / 2 * d for n, d in zip(self.shape, self.spacing)]
        return (x, y, z)


@dataclasses.dataclass
class CTCase:
    """One phantom study: ``hu`` (Z, Y, X), ground-truth labels, and details for the report."""

    hu: np.ndarray
    labels: dict[str, int]
    details: dict[str, dict]
    #: where each present finding was drawn, ``(Z, Y, X)`` bool (the enlarged heart for cardiomegaly)
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _ellipsoid(z, y, x, c, r) -> np.ndarray:
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1.0


def make_ct_case(rng: np.random.Generator, grid: CTGrid | None = None, prevalence: float = 0.4) -> CTCase:
    """Draw one chest-CT phantom with each finding present with probability ``prevalence``."""
    grid = grid or CTGrid()
    z, y, x = grid.coords()
    shape = grid.shape
    hu = np.full(shape, -1000.0)
    s = rng.uniform(0.9, 1.1)  # patient size
    a, b = 160 * s, 112 * s
    body_r = (x / a) ** 2 + ((y - 5) / b) ** 2
    body = np.broadcast_to(body_r <= 1.0, shape)
    hu[body] = -100.0  # subcutaneous fat
    hu[np.broadcast_to(body_r <= 0.82, shape)] = 45.0  # muscle and mediastinum
    labels = {f: int(rng.random() < prevalence) for f in CT_FINDINGS}
    details: dict[str, dict] = {}
    masks: dict[str, np.ndarray] = {}

    # lungs (patient right is -x in LPS)
    lung_c = {"right": (10.0, -2.0, -68 * s), "left": (6.0, -2.0, 66 * s)}
    lung_r = {"right": (120.0, 72 * s, 54 * s), "left": (115.0, 72 * s, 50 * s)}
    lung = {side: _ellipsoid(z, y, x, lung_c[side], lung_r[side]) & body for side in lung_c}
    lungs = lung["right"] | lung["left"]
    lung_hu = -850.0
    if labels["emphysema"]:
        grade = rng.choice(["mild", "moderate", "severe"])
        lung_hu = {"mild": -910.0, "moderate": -935.0, "severe": -960.0}[grade]
        details["emphysema"] = {"grade": grade}
    hu[lungs] = lung_hu + rng.normal(0, 25, size=int(lungs.sum()))
    if labels["emphysema"]:
        for _ in range(int(rng.integers(3, 7))):  # bullae, upper zones
            side = rng.choice(["right", "left"])
            c = (lung_c[side][0] + rng.uniform(10, 90), lung_c[side][1] + rng.uniform(-40, 40), lung_c[side][2] + rng.uniform(-25, 25))
            hu[_ellipsoid(z, y, x, c, (rng.uniform(12, 25),) * 3) & lungs] = -995.0

    # heart (anterior, left of midline, lower chest)
    heart_scale = 1.0
    if labels["cardiomegaly"]:
        heart_scale = rng.uniform(1.35, 1.55)
        details["cardiomegaly"] = {"scale": heart_scale}
    heart = _ellipsoid(z, y, x, (-45.0, -28.0, 18.0), (50.0, 40 * heart_scale, 50 * heart_scale)) & body
    hu[heart] = 40.0
    if labels["cardiomegaly"]:
        masks["cardiomegaly"] = heart
    # descending aorta and spine (posterior midline)
    hu[np.broadcast_to(((x - 22) ** 2 + (y - 62) ** 2) <= 13**2, shape)] = 42.0
    spine = np.broadcast_to((x**2 + (y - 92 * s) ** 2) <= 20**2, shape)
    hu[spine] = 320.0
    hu[np.broadcast_to((x**2 + (y - 92 * s) ** 2) <= 7**2, shape)] = 20.0  # spinal canal
    # ribs: thin bony arcs every ~25 mm
    rib_band = np.broadcast_to((body_r > 0.8) & (body_r <= 0.88), shape)
    rib_z = (np.mod(z + rng.uniform(0, 25), 25.0) < 9.0)
    hu[rib_band & np.broadcast_to(rib_z, shape) & np.broadcast_to(y > -60, shape)] = 600.0

    if labels["pleural effusion"]:
        sides = {"right": ["right"], "left": ["left"], "bilateral": ["right", "left"]}[rng.choice(["right", "left", "bilateral"])]
        size = rng.choice(["small", "moderate", "large"])
        depth = {"small": 0.3, "moderate": 0.45, "large": 0.6}[size]
        for side in sides:
            cz, cy, _ = lung_c[side]
            level = cy + lung_r[side][1] * (1 - 2 * depth) + 0.35 * (z - cz)  # meniscus: higher fluid posteriorly-inferiorly
            fluid = lung[side] & (y >= level) & (z < cz + 40)
            hu[fluid] = 12.0
            masks["pleural effusion"] = masks.get("pleural effusion", np.zeros(shape, bool)) | fluid
        details["pleural effusion"] = {"sides": sides, "size": size}
    if labels["consolidation"]:
        side = rng.choice(["right", "left"])
        lobe_i = int(rng.integers(0, 3))
        cz = lung_c[side][0] + (60, 0, -55)[lobe_i]
        c = (cz, lung_c[side][1] + rng.uniform(-20, 30), lung_c[side][2] + rng.uniform(-15, 15))
        region = _ellipsoid(z, y, x, c, (rng.uniform(30, 45), rng.uniform(25, 40), rng.uniform(25, 35))) & lung[side]
        hu[region] = 25.0 + rng.normal(0, 20, size=int(region.sum()))
        masks["consolidation"] = region
        details["consolidation"] = {"lobe": LOBES[side][lobe_i]}
    if labels["lung nodule"]:
        nodules = []
        for _ in range(int(rng.integers(1, 5))):
            side = rng.choice(["right", "left"])
            radius = rng.uniform(10, 16)
            lobe_i = int(rng.integers(0, 3))
            c = (lung_c[side][0] + (55, 5, -50)[lobe_i] + rng.uniform(-15, 15), lung_c[side][1] + rng.uniform(-35, 25), lung_c[side][2] + rng.uniform(-20, 20))
            nodule = np.broadcast_to(_ellipsoid(z, y, x, c, (radius,) * 3), shape)
            hu[nodule] = 35.0
            masks["lung nodule"] = masks.get("lung nodule", np.zeros(shape, bool)) | nodule
            nodules.append({"lobe": LOBES[side][lobe_i], "size_mm": int(round(2 * radius))})
        details["lung nodule"] = {"nodules": nodules}

    hu = gaussian_filter(hu, sigma=(0.5, 0.7, 0.7))  # partial-volume blur
    hu += rng.normal(0, 12, size=shape)  # quantum noise
    return CTCase(hu=hu.astype(np.float32), labels=labels, details=details,
                  masks={k: np.ascontiguousarray(np.broadcast_to(v, shape)) for k, v in masks.items()})
