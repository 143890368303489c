"""Chest anatomy as path-length maps (design.md section 4, "image formation").

Everything is evaluated on a square work grid of ``n`` pixels in normalised coordinates
``u`` (left to right in the image, -1..1; the patient's right is image left) and ``v`` (top to
bottom, -1..1). A patient is a :class:`Patient` of shape parameters; positioning (shift, rotation,
scale) is an affine map applied to the coordinates, so lungs, heart and ribs move together.

The maps are path lengths in centimetres through the body along the beam:

- ``tissue``: total body thickness (soft-tissue equivalent) ``T``;
- ``air``: air path inside the lungs, trachea and stomach ``A`` (it replaces tissue, so the soft
  tissue crossed is ``T - A``);
- ``bone``: bone path ``B`` (ribs, clavicles, spine, humeral heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Patient:
    """Shape parameters of one patient (fixed across their images)."""

    body_half_width: float  # torso half width, fraction of the half image width
    body_depth: float  # antero-posterior thickness, cm
    lung_half_width: float  # lateral extent of the lung from the midline
    apex_v: float  # lung apex height
    dome_v: float  # right hemidiaphragm dome top (the left one sits lower)
    heart_scale: float  # 1 = normal; AP projection magnifies the heart
    rib_spacing: float
    female: bool


@dataclass(frozen=True)
class Pose:
    """Patient positioning for one image: shift (du, dv), rotation (radians), scale."""

    du: float = 0.0
    dv: float = 0.0
    angle: float = 0.0
    scale: float = 1.0


def sample_patient(rng: np.random.Generator) -> Patient:
    return Patient(
        body_half_width=float(rng.uniform(0.82, 0.96)),
        body_depth=float(rng.uniform(20.0, 27.0)),
        lung_half_width=float(rng.uniform(0.70, 0.80)),
        apex_v=float(rng.uniform(-0.76, -0.66)),
        dome_v=float(rng.uniform(0.18, 0.32)),
        heart_scale=float(rng.uniform(0.9, 1.12)),
        rib_spacing=float(rng.uniform(0.098, 0.112)),
        female=bool(rng.random() < 0.5),
    )


def sample_pose(rng: np.random.Generator, jitter: float) -> Pose:
    """Random positioning; ``jitter`` is the shift spread as a fraction of the image width."""
    return Pose(
        du=float(rng.normal(0.0, jitter)),
        dv=float(rng.normal(0.0, jitter)) + 0.02,
        angle=float(rng.normal(0.0, jitter * 1.2)),
        scale=float(np.clip(rng.normal(1.0, jitter * 1.5), 0.8, 1.2)),
    )


def grid(n: int, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Body coordinates (u, v), each (n, n) float32, of every image pixel under ``pose``."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
    x, y = np.meshgrid(c, c)
    x, y = x - pose.du, y - pose.dv
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    u = (cos * x + sin * y) / pose.scale
    v = (-sin * x + cos * y) / pose.scale
    return u.astype(np.float32), v.astype(np.float32)


def _chord(d: np.ndarray, half_width: float) -> np.ndarray:
    """Path length through a cylinder of radius ``half_width`` at distance ``d`` (max 1)."""
    return np.sqrt(np.clip(1.0 - (d / half_width) ** 2, 0.0, None))


def _band(u: np.ndarray, v: np.ndarray, curve, x0: float, x1: float, width: float, cortex: bool) -> np.ndarray:
    """Bone path of a curved band whose centre line is ``v = curve(x)`` for ``x0 <= x <= x1``.

    ``x`` is ``|u|`` (both sides at once). A cortical shell (dense rim, lighter marrow) is what
    makes ribs look like ribs rather than stripes.
    """
    out = np.zeros_like(u)
    xs = np.linspace(x0, x1, 32, dtype=np.float32)
    lo, hi = float(curve(xs).min()) - 2 * width, float(curve(xs).max()) + 2 * width
    rows = np.nonzero(((v >= lo) & (v <= hi)).any(axis=1))[0]
    if rows.size == 0:
        return out
    sl = slice(int(rows[0]), int(rows[-1]) + 1)  # only the rows the band can touch: ribs are many
    uu, vv = u[sl], v[sl]
    x = np.abs(uu)
    vc = curve(x)
    slope = (curve(x + 1e-3) - vc) / 1e-3
    d = (vv - vc) / np.sqrt(1.0 + slope**2)
    path = _chord(d, width)
    if cortex:
        path = path - 0.7 * _chord(d, 0.75 * width)
    fade = np.clip((x - x0) / 0.04, 0, 1) * np.clip((x1 - x) / 0.06, 0, 1)
    out[sl] = path * fade
    return out


def lung_masks(u: np.ndarray, v: np.ndarray, p: Patient) -> tuple[np.ndarray, np.ndarray, dict]:
    """Boolean masks of the right lung (image left) and the left lung (image right).

    Returns:
        (right, left, geom): two (n, n) bool masks and per-lung geometry maps used for zones:
        ``t`` (0 at the apex, 1 at the costophrenic level), ``lateral`` (0 medial .. 1 lateral),
        ``dome`` (height of the diaphragm above the pixel, v units).
    """
    base_v = p.dome_v + 0.26
    t = (v - p.apex_v) / (base_v - p.apex_v)
    tc = np.clip(t, 0.0, 1.0)
    x = np.abs(u)
    apex_x = 0.30
    lat = apex_x + (p.lung_half_width - apex_x) * np.sqrt(np.sin(np.pi / 2 * np.clip(tc * 1.6, 0, 1)))
    med = 0.11 + (apex_x - 0.11) * (1.0 - np.sqrt(np.clip(tc * 3.0, 0, 1)))
    med = med + 0.04 * np.exp(-(((v - (p.apex_v + 0.38)) / 0.08) ** 2)) * (u > 0)  # aortic knob
    masks = []
    for side, dome_top in ((-1, p.dome_v), (1, p.dome_v + 0.05)):
        centre = (p.lung_half_width + 0.12) / 2
        half = (p.lung_half_width - 0.12) / 2
        dome = dome_top + 0.24 * ((x - centre) / half) ** 2
        on_side = (u * side) > 0
        m = on_side & (t >= 0) & (x > med) & (x < lat) & (v < dome)
        masks.append((m, dome))
    (right, dome_r), (left, dome_l) = masks
    lateral = np.clip((x - med) / np.maximum(lat - med, 1e-3), 0, 1)
    dome = np.where(u < 0, dome_r, dome_l) - v
    return right, left, {"t": t, "lateral": lateral, "dome": dome}


def heart_profile(u: np.ndarray, v: np.ndarray, p: Patient) -> np.ndarray:
    """Heart thickness profile in [0, 1] (ellipsoid), shifted to the patient's left."""
    cu, cv = 0.13, p.dome_v - 0.02
    ang = -0.45
    du, dv = u - cu, v - cv
    a = (np.cos(ang) * du + np.sin(ang) * dv) / (0.37 * p.heart_scale)
    b = (-np.sin(ang) * du + np.cos(ang) * dv) / (0.25 * p.heart_scale)
    return np.sqrt(np.clip(1.0 - a**2 - b**2, 0.0, None))


def vessels(u: np.ndarray, v: np.ndarray, p: Patient, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vascular markings: streaks radiating from each hilum, fading to the periphery.

    Noise is drawn on a polar (angle x radius) grid that is fine in angle and coarse in radius,
    so that after sampling it forms radial, branching-looking bands. Returns (n, n) cm of tissue.
    """
    out = np.zeros_like(u)
    for side in (-1, 1):
        hu, hv = side * 0.13, p.apex_v + 0.60
        theta = np.arctan2(v - hv, side * (u - hu))
        r = np.hypot(u - hu, v - hv)
        for bins, amp in ((90, 0.8), (220, 0.6)):
            polar = ndimage.gaussian_filter(rng.standard_normal((bins, 10)).astype(np.float32), (0.8, 1.2),
                                            mode="wrap")
            polar /= polar.std() + 1e-6
            coords = np.stack([(theta + np.pi) / (2 * np.pi) * bins, r / 1.3 * 10])
            field = ndimage.map_coordinates(polar, coords, order=1, mode="wrap")
            out += amp * np.clip(field - 0.7, 0, None) * np.exp(-r / 0.35) * np.clip(r / 0.15, 0, 1)
        out += 3.0 * np.exp(-(((u - side * 0.2) / 0.07) ** 2 + ((v - hv) / 0.12) ** 2))  # hilum
    return 3.5 * out


def build(n: int, p: Patient, pose: Pose, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Path-length maps and masks of one chest on an ``n`` x ``n`` work grid.

    Returns:
        dict with float32 (n, n) ``tissue``, ``air``, ``bone`` (cm), ``heart`` (0..1), and bool
        (n, n) ``lung_right``, ``lung_left`` plus zone geometry ``t``, ``lateral``, ``dome``.
    """
    u, v = grid(n, pose)
    # Torso: an elliptic cross-section whose half width narrows to the neck at the top.
    bw = p.body_half_width
    half = np.interp(v, [-1.0, -0.90, -0.80, -0.70, -0.50, 0.2, 1.0],
                     [0.24, 0.27, 0.55, bw - 0.02, bw, bw - 0.02, bw - 0.08])
    tissue = p.body_depth * np.sqrt(np.clip(1.0 - (u / half) ** 2, 0.0, None))
    if p.female:  # breast shadows: extra soft tissue over the lower lateral lungs
        for s in (-1, 1):
            r2 = ((u - s * 0.48) / 0.30) ** 2 + ((v - (p.dome_v + 0.02)) / 0.22) ** 2
            tissue = tissue + 3.0 * np.sqrt(np.clip(1 - r2, 0, None)) * np.clip((v - p.dome_v + 0.2) / 0.15, 0, 1)

    right, left, geom = lung_masks(u, v, p)
    lungs = (right | left).astype(np.float32)
    sigma = 0.035 * n
    soft = ndimage.gaussian_filter(lungs, 0.8)  # anti-aliased border: no stair steps after upsampling
    depth = ndimage.gaussian_filter(lungs, sigma) * soft
    depth = np.clip(depth / max(depth.max(), 1e-6), 0, 1) ** 0.75
    heart = heart_profile(u, v, p)
    # The heart displaces lung: less air where it is thick, which is what shapes the heart border.
    air = 0.68 * p.body_depth * depth * (1.0 - 0.75 * heart)
    air = air + 1.6 * _chord(u + 0.005, 0.035) * (v < -0.12) * (v > -1.0)  # trachea
    gastric = ((u - 0.40) / 0.13) ** 2 + ((v - (p.dome_v + 0.20)) / 0.07) ** 2
    air = air + 4.0 * np.sqrt(np.clip(1 - gastric, 0, None)) * (v > p.dome_v + 0.08)
    tissue = tissue + 2.0 * heart + vessels(u, v, p, rng) * np.clip(depth * 1.5, 0, 1)

    bone = np.zeros_like(u)
    # Spine: vertebral bodies with disc spaces, seen faintly through the mediastinum.
    period = p.rib_spacing
    vertebra = 0.75 + 0.25 * np.cos(2 * np.pi * (v - p.apex_v) / period)
    bone += 0.9 * _chord(u, 0.075) * vertebra
    for k in range(11):  # posterior ribs: from the spine up-and-out, then down the lateral wall
        v0 = p.apex_v - 0.05 + k * period
        c = 0.28 + 0.03 * k
        width = 0.020 + 0.0012 * k
        x1 = float(np.interp(v0, [-1, 1], [half.min(), p.body_half_width])) - 0.02

        def curve(x, v0=v0, c=c):
            return v0 - 0.10 * (x - 0.06) + c * np.clip(x - 0.06, 0, None) ** 2 * 1.5
        bone += 0.95 * _band(u, v, curve, 0.06, p.body_half_width - 0.03, width, cortex=True)
        end_x = p.body_half_width - 0.05
        v_end = float(curve(np.float32(end_x)))

        def ant(x, v_end=v_end, end_x=end_x):  # anterior rib: lateral end high, medial end low
            return v_end + 0.42 * (end_x - x) - 0.12 * (end_x - x) ** 2
        bone += 0.3 * _band(u, v, ant, 0.22, end_x, width * 1.3, cortex=False)
        del x1

    def clavicle(x):
        return p.apex_v + 0.07 - 0.17 * (x - 0.06) + 0.08 * np.sin(np.pi * np.clip(x - 0.06, 0, 0.6) / 0.6)
    bone += 1.8 * _band(u, v, clavicle, 0.05, 0.66, 0.032, cortex=True)
    for s in (-1, 1):  # humeral heads in the upper corners
        r = np.sqrt((u - s * (p.body_half_width + 0.10)) ** 2 + (v - (p.apex_v - 0.08)) ** 2)
        bone += 2.5 * _chord(r, 0.15)
        tissue = tissue + 6.0 * _chord(r, 0.22)

    return {
        "tissue": tissue.astype(np.float32),
        "air": air.astype(np.float32),
        "bone": bone.astype(np.float32),
        "heart": heart.astype(np.float32),
        "lung_right": right,
        "lung_left": left,
        **{k: val.astype(np.float32) for k, val in geom.items()},
    }
