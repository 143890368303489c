"""Things the detector never saw at site A: support devices, ECG electrodes and text markers.

They are drawn as metal-equivalent path length (cm) on the work grid with Pillow; electrodes and
lead letters are round or blocky dense spots, which is exactly what can pass for a focal opacity.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

DEVICES = ("endotracheal tube", "central venous catheter", "nasogastric tube", "ECG electrodes",
           "pacemaker", "text marker")


def _polyline(draw: ImageDraw.ImageDraw, pts: np.ndarray, n: int, width: int, value: float) -> None:
    xy = [(float((x + 1) / 2 * n), float((y + 1) / 2 * n)) for x, y in pts]
    draw.line(xy, fill=value, width=width)


def _curve(a, b, bend, k=24):
    """Quadratic Bezier from a to b, bowed sideways by ``bend`` (normalised units)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    mid = (a + b) / 2 + bend * np.array([-(b - a)[1], (b - a)[0]])
    t = np.linspace(0, 1, k)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * mid + t**2 * b


def draw(n: int, rng: np.random.Generator, dome_v: float, view: str) -> tuple[np.ndarray, list[str]]:
    """Metal path map (n, n) float32 and the names of what was drawn (for the report)."""
    img = Image.new("F", (n, n), 0.0)
    d = ImageDraw.Draw(img)
    names: list[str] = []
    lw = max(1, n // 200)
    if rng.random() < 0.5:  # endotracheal tube down the trachea, tip above the carina
        tip = -0.35 + rng.normal(0, 0.05)
        _polyline(d, _curve((0.02, -1.0), (0.0, tip), 0.05), n, 2 * lw, 0.6)
        names.append("endotracheal tube")
    if rng.random() < 0.5:  # central line from the neck into the superior vena cava
        side = rng.choice([-1, 1])
        _polyline(d, _curve((side * 0.32, -0.95), (-0.06, -0.2 + rng.normal(0, 0.05)), 0.2 * side), n, lw, 0.8)
        names.append("central venous catheter")
    if rng.random() < 0.35:  # nasogastric tube into the stomach
        _polyline(d, _curve((-0.02, -1.0), (0.38, dome_v + 0.25), -0.08), n, lw, 0.7)
        names.append("nasogastric tube")
    if rng.random() < 0.6:  # ECG electrodes with leads: the classic pseudo-nodules
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(-0.7, 0.7), rng.uniform(-0.75, 0.1)
            r = 0.03 * n / 2 * rng.uniform(0.8, 1.2)
            x, y = (cx + 1) / 2 * n, (cy + 1) / 2 * n
            d.ellipse([x - r, y - r, x + r, y + r], fill=0.25)
            d.ellipse([x - r / 3, y - r / 3, x + r / 3, y + r / 3], fill=1.2)
            _polyline(d, _curve((cx, cy), (cx + rng.uniform(-0.5, 0.5), -1.0), rng.uniform(-0.3, 0.3)), n, lw, 0.35)
        names.append("ECG electrodes")
    if rng.random() < 0.12:  # pacemaker generator in the left upper chest with a lead to the heart
        x, y = (0.45 + 1) / 2 * n, (-0.55 + 1) / 2 * n
        s = 0.045 * n
        d.rounded_rectangle([x - s, y - 0.7 * s, x + s, y + 0.7 * s], radius=s / 3, fill=2.0)
        _polyline(d, _curve((0.45, -0.55), (0.05, dome_v - 0.05), 0.25), n, lw, 0.9)
        names.append("pacemaker")
    if rng.random() < 0.8:  # burned-in lead marker / text, as technologists place them
        font = ImageFont.load_default(size=max(8, n // 30))
        text = str(rng.choice(["L", "R", view, "PORTABLE", "UPRIGHT", "SUPINE"]))
        x = rng.uniform(0.05, 0.8) * n
        y = rng.choice([rng.uniform(0.02, 0.1), rng.uniform(0.85, 0.93)]) * n
        d.text((x, y), text, fill=1.5, font=font)
        names.append("text marker")
    metal = np.asarray(img, dtype=np.float32)
    return ndimage.gaussian_filter(metal, 0.6), names
