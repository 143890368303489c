"""The decoded image, the quarantine reasons and the intensity window shared by every decoder.

``grounding.data.imaging`` dispatches bytes to ``dicom_decode`` / ``raster_decode``; all three use
these types. The policy itself is documented in ``grounding.data.imaging``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# At most this many pixels feed the percentile estimate (strided, deterministic subsample).
_PERCENTILE_SAMPLE = 1 << 20


class Reason(str, enum.Enum):
    """Quarantine reason codes (the ``reason`` column of the quarantine table)."""

    EMPTY_FILE = "empty_file"  # zero bytes
    UNREADABLE = "unreadable"  # I/O error: missing file, permission, storage failure
    NOT_DICOM = "not_dicom"  # neither DICOM nor PNG/JPEG
    TRUNCATED = "truncated"  # file ends inside the header or the pixel data
    NO_PIXELS = "no_pixels"  # a DICOM without (7FE0,0010) Pixel Data
    NOT_RADIOGRAPH = "not_radiograph"  # SOP class / modality not CR, DX (e.g. SEG, SR, RT, CT)
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # no installed decoder for it
    DECODE_ERROR = "decode_error"  # the pixel codec failed (corrupt stream, wrong shape)
    TOO_LARGE = "too_large"  # declared pixels above max_pixels (checked before decoding)
    MULTIFRAME = "multiframe"  # NumberOfFrames > 1
    COLOR = "color"  # a colour DICOM (SamplesPerPixel > 1, RGB/YBR/PALETTE)
    DEGENERATE_INTENSITY = "degenerate_intensity"  # constant image: nothing to normalise
    BAD_IMAGE = "bad_image"  # PNG/JPEG decode failure


class QuarantineError(Exception):
    """One input that cannot be used.

    Attributes:
        reason: the :class:`Reason` code.
        message: what is wrong, from our own text only: no header values, no file name (PHI-safe
            to store in Parquet next to the ``image_uri`` column and to log).
        name: the file name/URI it concerns (shown by ``str(err)``, kept out of ``message``).
    """

    def __init__(self, reason: Reason, message: str, name: str = "") -> None:
        self.reason = Reason(reason)
        self.message = message
        self.name = name
        text = f"{self.reason.value}: {message}"
        super().__init__(f"{name}: {text}" if name else text)

    def __reduce__(self):  # picklable across Ray workers with all three fields
        return (QuarantineError, (self.reason, self.message, self.name))


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, normalised image.

    Attributes:
        pixels: float32 (H, W) in [0, 1], air dark / bone bright, finite, original resolution.
        info: plain JSON-able values only: ``source_format`` ('dicom' | 'png' | 'jpeg'),
            ``transfer_syntax`` (UID or None), ``transfer_syntax_name``, ``sop_class_name``,
            ``modality``, ``photometric`` (as stored; PIL mode for PNG/JPEG),
            ``presentation_lut_shape``, ``bits_allocated``, ``bits_stored``, ``height``, ``width``
            (original), ``voi`` (policy used), ``window_low``/``window_high`` (in modality units),
            ``inverted`` (bool). Every value comes from a fixed vocabulary or is a number.
    """

    pixels: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def normalise_intensity(
    values: np.ndarray, *, low_percentile: float, high_percentile: float, invert: bool, name: str = ""
) -> tuple[np.ndarray, dict[str, Any]]:
    """Percentile window to [0, 1], inverted after the window when ``invert``.

    Args:
        values: (H, W) real-valued image in modality units (any numeric dtype).
        low_percentile, high_percentile: the window in display polarity (dark end, bright end).
        invert: True for MONOCHROME1 / INVERSE presentation (low stored value = bright).

    Returns:
        (pixels float32 (H, W) in [0, 1], info with ``voi``, ``window_low``, ``window_high``,
        ``inverted``).

    Raises:
        QuarantineError: ``degenerate_intensity`` for a constant image, ``decode_error`` for
            non-finite values.
    """
    x = np.asarray(values)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise QuarantineError(Reason.DECODE_ERROR, "pixel values are not all finite (NaN/Inf)", name)
    vmin, vmax = float(x.min()), float(x.max())
    if not vmax > vmin:
        raise QuarantineError(Reason.DEGENERATE_INTENSITY, "constant image (min == max)", name)
    step = max(1, int(np.ceil(np.sqrt(x.size / _PERCENTILE_SAMPLE))))
    sample = x[::step, ::step]
    # The window is chosen in display polarity: for an inverted image the dark end is high values.
    q = (100.0 - high_percentile, 100.0 - low_percentile) if invert else (low_percentile, high_percentile)
    lo, hi = _percentiles(sample, q, vmin, vmax)
    voi = f"percentile({low_percentile:g},{high_percentile:g})"
    if not hi > lo:  # e.g. > 99 % of pixels share one value: use the full range instead
        lo, hi, voi = vmin, vmax, "minmax_fallback"
    y = x.astype(np.float64)  # float64: exact for any stored integer and the M1/M2 symmetry
    if invert:
        np.subtract(hi, y, out=y)
    else:
        y -= lo
    y *= 1.0 / (hi - lo)
    pixels = np.clip(y, 0.0, 1.0, out=y).astype(np.float32)
    info = {"voi": voi, "window_low": lo, "window_high": hi, "inverted": bool(invert)}
    return pixels, info


def _percentiles(sample: np.ndarray, q: tuple[float, float], vmin: float, vmax: float) -> tuple[float, float]:
    """``np.percentile(sample, q)`` (linear method), by counting when values are small integers.

    Counting is exact and ~10x faster than sorting for 8-16-bit images, the common case.
    """
    if sample.dtype.kind in "iub" and vmax - vmin < (1 << 20):
        counts = np.bincount((sample.ravel().astype(np.int64) - int(vmin)))
        cum = np.cumsum(counts)
        out = []
        for pct in q:
            rank = pct / 100.0 * (sample.size - 1)  # numpy's "linear" virtual index
            below = int(np.floor(rank))
            ranks = (below, min(below + 1, sample.size - 1))
            v0, v1 = (float(np.searchsorted(cum, k, side="right")) + vmin for k in ranks)
            out.append(v0 + (rank - below) * (v1 - v0))
        return out[0], out[1]
    lo, hi = np.percentile(sample.astype(np.float64).ravel(), q)
    return float(lo), float(hi)
