"""Image formation: path lengths -> transmitted intensity -> detector -> stored pixel values.

``I = I0 * exp(-sum_k mu_k * t_k)``; quantum noise is Gaussian with the Poisson variance of the
photon count (relative noise grows where less radiation reaches the detector); the detector
records ``-log(I / I0)`` (a CR/DX-like logarithmic signal), blurs it (detector MTF), and a
site-specific window and response curve (gamma) map it to display values in [0, 1] with air dark
and bone bright (MONOCHROME2 polarity). :func:`quantize` stores them at the site's bit depth.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

MU_SOFT = 0.21  # 1/cm, soft tissue (and water, pus, blood) at diagnostic energies, effective
MU_BONE = 0.50  # 1/cm, cortical bone relative to soft tissue path, effective
MU_METAL = 3.0  # 1/cm, wires, electrodes, lead letters
LUNG_REFERENCE = 1.6  # typical line integral through the lungs: noise is quoted there


def line_integral(tissue: np.ndarray, air: np.ndarray, bone: np.ndarray, fill: np.ndarray,
                  metal: np.ndarray) -> np.ndarray:
    """``sum mu * t`` per pixel. An opacity fills a fraction ``fill`` of the air path with fluid.

    Shapes: all (n, n) float32; returns (n, n) float32.
    """
    soft = tissue - air * (1.0 - np.clip(fill, 0.0, 1.0))
    return (MU_SOFT * soft + MU_BONE * bone + MU_METAL * metal).astype(np.float32)


def resize(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 field (PIL mode ``F`` is fast and deterministic)."""
    if field.shape == (height, width):
        return field.astype(np.float32)
    img = Image.fromarray(field.astype(np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32)


def expose(integral: np.ndarray, rng: np.random.Generator, noise: float, blur: float,
           gamma: float, window: tuple[float, float]) -> np.ndarray:
    """Detector signal of one exposure at the integral's resolution.

    Args:
        integral: (H, W) line integral ``sum mu t``.
        rng: generator for the quantum noise.
        noise: relative noise (std / mean) of the intensity at :data:`LUNG_REFERENCE`.
        blur: Gaussian sigma of the detector response, pixels.
        gamma: response curve exponent applied after the window (1 = linear in log exposure).
        window: (low, high) log-signal mapped to (0, 1).

    Returns:
        (H, W) float32 display values in [0, 1], air dark, bone bright.
    """
    intensity = np.exp(-integral)
    if noise > 0:
        # Poisson: var(N) = N, so the relative std scales as 1/sqrt(I): noisier behind the heart.
        rel = noise * np.exp(0.5 * (integral - LUNG_REFERENCE)).clip(0, 20)
        z = rng.standard_normal(integral.shape, dtype=np.float32)
        intensity = intensity * (1.0 + rel * z)
    signal = -np.log(np.clip(intensity, 1e-4, None, out=intensity))
    if blur > 0.3:
        signal = ndimage.gaussian_filter(signal, blur, truncate=2.5)
    lo, hi = window
    display = np.clip((signal - lo) / (hi - lo), 0.0, 1.0)
    if gamma != 1.0:
        display = display**gamma
    return display.astype(np.float32)


def quantize(display: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] floats -> unsigned integers with ``bits`` significant bits (uint8 or uint16)."""
    top = (1 << bits) - 1
    values = np.rint(np.clip(display, 0.0, 1.0) * top)
    return values.astype(np.uint8 if bits <= 8 else np.uint16)
