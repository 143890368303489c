"""Pneumonia-like opacities, the boxes an annotator would draw, and geographic-extent severity.

An opacity is a fill fraction ``F`` in [0, 1] of the lung's air path (0 = aerated lung, 1 = fully
consolidated). Its spatial layout follows the attribute vocabulary: sides (left/right/bilateral),
zones (upper/middle/lower, apical, basal, perihilar, peripheral, retrocardiac, lingular), pattern
(focal/patchy/multifocal/diffuse) and texture (hazy ground glass, streaky, dense consolidation).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

INVOLVED = 0.12  # fill fraction above which a lung pixel counts as involved (extent, boxes)


class Pattern(str, enum.Enum):
    FOCAL = "focal"
    PATCHY = "patchy"
    MULTIFOCAL = "multifocal"
    DIFFUSE = "diffuse"


class Texture(str, enum.Enum):
    HAZY = "hazy"  # ground glass: faint, vessels still visible
    STREAKY = "streaky"  # linear, anisotropic
    CONSOLIDATION = "consolidation"  # dense; no texture word in the vocabulary


ZONES = ("upper", "middle", "lower", "apical", "basal", "perihilar", "peripheral", "retrocardiac", "lingular")
LEFT_ONLY = ("retrocardiac", "lingular")


@dataclass
class Truth:
    """What a lesion sampler decided, before and after rendering."""

    sides: list[str] = field(default_factory=list)  # subset of ("right", "left")
    zones: list[str] = field(default_factory=list)
    pattern: str = ""
    texture: str = ""
    density: float = 0.0


def zone_masks(maps: dict, side: str) -> dict[str, np.ndarray]:
    """Boolean (n, n) zone masks inside one lung (``side`` = "right" | "left")."""
    lung = maps[f"lung_{side}"]
    t, lat, dome, heart = maps["t"], maps["lateral"], maps["dome"], maps["heart"]
    zones = {
        "upper": t < 0.38,
        "middle": (t >= 0.34) & (t < 0.66),
        "lower": t >= 0.60,
        "apical": t < 0.16,
        "basal": dome < 0.16,
        "perihilar": (lat < 0.45) & (t > 0.3) & (t < 0.72),
        "peripheral": lat > 0.62,
        "retrocardiac": (heart > 0.15) & (t > 0.45),
        "lingular": (lat < 0.6) & (t > 0.45) & (t < 0.8) & (heart < 0.35),
    }
    return {k: z & lung for k, z in zones.items()}


def smooth_noise(rng: np.random.Generator, n: int, cells: int, aniso: float = 1.0) -> np.ndarray:
    """Zero-mean unit-std smooth random field (n, n): white noise on a coarse grid, upsampled."""
    coarse = ndimage.gaussian_filter(rng.standard_normal((cells, cells)).astype(np.float32),
                                     (1.0, 1.0 * aniso), mode="reflect")
    up = ndimage.zoom(coarse, n / cells, order=1, mode="nearest")[:n, :n]
    if up.shape != (n, n):
        up = np.pad(up, ((0, n - up.shape[0]), (0, n - up.shape[1])), mode="edge")
    return (up - up.mean()) / (up.std() + 1e-6)


def sample_truth(rng: np.random.Generator) -> Truth:
    """Draw the attributes of one positive image (zones are checked against the anatomy later)."""
    pattern = rng.choice([p.value for p in Pattern], p=[0.35, 0.3, 0.17, 0.18])
    texture = rng.choice([t.value for t in Texture], p=[0.35, 0.15, 0.5])
    r = rng.random()
    if pattern in (Pattern.DIFFUSE, Pattern.MULTIFOCAL):
        sides = ["right", "left"] if r < 0.7 else [["right"], ["left"]][int(rng.random() < 0.5)]
    else:
        sides = ["right", "left"] if r < 0.15 else [["right"], ["left"]][int(rng.random() < 0.5)]
    if pattern == Pattern.DIFFUSE:
        zones = [] if rng.random() < 0.5 else [str(rng.choice(["lower", "perihilar", "peripheral", "basal"]))]
    else:
        k = 1 if pattern != Pattern.MULTIFOCAL else int(rng.integers(2, 4))
        options = [z for z in ZONES if z not in LEFT_ONLY or sides == ["left"]]
        weights = np.array([3, 2.5, 4, 0.8, 1.5, 1.2, 1.2, 0.8, 0.6][: len(options)] if sides == ["left"]
                           else [3, 2.5, 4, 0.8, 1.5, 1.2, 1.2], dtype=float)
        zones = list(rng.choice(options, size=min(k, len(options)), replace=False, p=weights / weights.sum()))
    lo, hi = {"hazy": (0.3, 0.45), "streaky": (0.45, 0.65), "consolidation": (0.65, 0.95)}[texture]
    return Truth(sides=list(sides), zones=[str(z) for z in zones], pattern=str(pattern), texture=str(texture),
                 density=float(rng.uniform(lo, hi)))


def _blob(rng: np.random.Generator, n: int, centre: tuple[int, int], radius: float, noise: np.ndarray) -> np.ndarray:
    """Irregular blob: an anisotropic Gaussian envelope cut by a smooth random field."""
    yy, xx = np.ogrid[:n, :n]
    ry, rx = radius * rng.uniform(0.7, 1.3), radius * rng.uniform(0.7, 1.3)
    env = np.exp(-(((yy - centre[0]) / ry) ** 2 + ((xx - centre[1]) / rx) ** 2))
    return np.clip((env * (1.0 + 0.45 * noise) - 0.25) / 0.3, 0.0, 1.0)  # a plateau: opacities are filled


def render(truth: Truth, maps: dict, rng: np.random.Generator) -> np.ndarray:
    """Fill-fraction field (n, n) float32 for ``truth`` on the anatomy ``maps``.

    Zones that do not exist in this anatomy (tiny after positioning) are dropped from ``truth``.
    """
    n = maps["t"].shape[0]
    aniso = 4.0 if truth.texture == Texture.STREAKY else 1.0
    detail = smooth_noise(rng, n, max(8, n // 10), aniso)
    broad = smooth_noise(rng, n, 6)
    fill = np.zeros((n, n), np.float32)
    kept_zones: set[str] = set()
    for side in truth.sides:
        lung = maps[f"lung_{side}"]
        zmasks = zone_masks(maps, side)
        lung_px = max(int(lung.sum()), 1)
        if truth.pattern == Pattern.DIFFUSE:
            weight = np.ones((n, n), np.float32)
            for z in truth.zones:  # predominance: the named zone is fully involved, the rest partly
                weight = np.where(zmasks[z], 1.0, 0.45).astype(np.float32)
                kept_zones.add(z)
            f = np.clip(0.75 + 0.35 * broad + 0.25 * detail, 0, 1) * weight
            fill = np.maximum(fill, f * lung)
            continue
        zones = [z for z in truth.zones if zmasks[z].sum() > 0.01 * lung_px] or ["middle"]
        for z in zones:
            kept_zones.add(z)
            ys, xs = np.nonzero(zmasks[z])
            count = 1 if truth.pattern != Pattern.PATCHY else int(rng.integers(3, 6))
            scale = {Pattern.FOCAL: 0.85, Pattern.PATCHY: 0.5}.get(truth.pattern, 0.65)
            base_r = max(np.sqrt(zmasks[z].sum() / np.pi) * scale, 0.07 * n)
            first = int(rng.integers(len(ys)))
            for i in range(count):
                j = first if i == 0 else int(rng.integers(len(ys)))
                if i > 0:  # patchy: satellites near the first patch
                    d2 = (ys - ys[first]) ** 2 + (xs - xs[first]) ** 2
                    near = np.nonzero(d2 < (2.5 * base_r) ** 2)[0]
                    j = int(near[rng.integers(len(near))])
                blob = _blob(rng, n, (int(ys[j]), int(xs[j])), base_r * rng.uniform(0.6, 1.0), detail)
                fill = np.maximum(fill, blob * lung)
    truth.zones = [z for z in truth.zones if z in kept_zones]
    texture = np.clip(0.8 + 0.25 * detail, 0.4, 1.0) if truth.texture != Texture.STREAKY else \
        np.clip(0.6 + 0.6 * detail, 0.0, 1.0)
    lungs = (maps["lung_right"] | maps["lung_left"]).astype(np.float32)
    fill = ndimage.gaussian_filter(fill, 0.006 * n) * ndimage.gaussian_filter(lungs, 0.8)
    return (truth.density * fill * texture).astype(np.float32)


def extent_scores(fill: np.ndarray, maps: dict) -> tuple[float, float, int, int]:
    """Fraction of each lung involved and the 0-4 geographic-extent score per lung.

    Returns:
        (fraction_right, fraction_left, score_right, score_left); score is 0 for no involvement,
        then 1 (<25 %), 2 (25-50 %), 3 (50-75 %), 4 (>75 %).
    """
    out = []
    for side in ("right", "left"):
        lung = maps[f"lung_{side}"]
        frac = float(((fill > INVOLVED) & lung).sum() / max(int(lung.sum()), 1))
        out.append(frac)
    return out[0], out[1], extent_score(out[0]), extent_score(out[1])


def extent_score(fraction: float) -> int:
    if fraction <= 0.0:
        return 0
    return 1 + int(min(fraction, 0.9999) // 0.25)


def severity_word(score: int) -> str:
    """The grade a radiologist would write for a 0-8 total score ('' for 0)."""
    if score <= 0:
        return ""
    if score <= 2:
        return "mild"
    if score <= 4:
        return "moderate"
    return "severe"


def boxes_from_fill(fill: np.ndarray, out_hw: tuple[int, int], rng: np.random.Generator, jitter: float,
                    min_fraction: float = 0.003) -> np.ndarray:
    """What an annotator draws: one box per connected opacity region (nearby patches merged).

    Args:
        fill: (n, n) fill fraction on the work grid.
        out_hw: (height, width) of the stored image; boxes are returned in its pixels.
        jitter: edge noise as a fraction of the box size.

    Returns:
        (K, 4) float64 xyxy boxes in stored pixels, inside the image.
    """
    n = fill.shape[0]
    mask = fill > INVOLVED
    if not mask.any():
        return np.zeros((0, 4))
    merged = ndimage.binary_dilation(mask, iterations=max(1, int(0.025 * n)))
    labels, count = ndimage.label(merged)
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        region = mask[sl] & (labels[sl] == k)
        if region.sum() < min_fraction * n * n:
            continue
        ys, xs = np.nonzero(region)
        y0, y1 = sl[0].start + ys.min(), sl[0].start + ys.max() + 1
        x0, x1 = sl[1].start + xs.min(), sl[1].start + xs.max() + 1
        boxes.append([x0, y0, x1, y1])
    if not boxes:
        return np.zeros((0, 4))
    b = np.asarray(boxes, dtype=np.float64)
    h, w = out_hw
    b *= np.array([w / n, h / n, w / n, h / n])
    size = np.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=1)
    b += rng.normal(0.0, jitter, b.shape) * size
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    b = b[(b[:, 2] - b[:, 0] > 2) & (b[:, 3] - b[:, 1] > 2)]
    return np.round(b, 1)
