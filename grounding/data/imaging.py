"""Image decoding for every job: DICOM / PNG / JPEG bytes -> float32 (H, W) in [0, 1], air dark.

One decoder serves ``prepare`` (Ray Data), ``inspect`` and ``predict``. Bad input never crashes a
job: every failure is a :class:`QuarantineError` with a :class:`Reason` code and a message built
from our own text only (never a header value, never the pydicom exception text, so no PHI).

Intensity policy (fixed, documented, recorded in ``DecodedImage.info``):

1. DICOM: stored values -> modality LUT / rescale (``pydicom.pixels.apply_modality_lut``; a
   negative slope is applied as written). Header VOI windows and VOI LUTs are **ignored**; sites
   disagree on them and a percentile window makes datasets look alike. PNG/JPEG: grey values.
2. Percentile window ``[low_percentile, high_percentile]`` over the whole image (a fixed strided
   subsample of at most ~1 M pixels for speed), clipped to [0, 1]. If the window collapses
   (e.g. a mostly-constant image) it falls back to the min/max window; a constant image is
   quarantined (``degenerate_intensity``).
3. Polarity: MONOCHROME1, or ``PresentationLUTShape == INVERSE`` (either, not both twice: a DX
   MONOCHROME1 image carries INVERSE by rule), is inverted **after** the window using the window
   itself: ``y = (hi - x) / (hi - lo)`` where the window is taken in display polarity
   (``lo = P(100 - high)``, ``hi = P(100 - low)``). So a MONOCHROME1 image and its MONOCHROME2
   twin ``stored2 = K - stored1`` give the same output for any percentile pair.

Resizing (:func:`resize_uint8`) is a plain anisotropic resize to a square; boxes follow with
``grounding.data.boxes.scale_boxes((H, W), (size, size))``.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from typing import Any

import numpy as np

# The decoded-image types live in grounding.data.decoded, which the format decoders import too
# (imaging dispatches to them: keeping the types here made an import circle).
from grounding.data.decoded import DecodedImage, QuarantineError, Reason, normalise_intensity

__all__ = ["DecodedImage", "QuarantineError", "Reason", "decode_bytes", "decode_file", "inspect_file",
           "normalise_intensity", "resize_uint8", "to_uint8"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
# File-size guard before reading: generous bound for the largest legal image (float32 RGB + slack).
_BYTES_PER_PIXEL_BOUND = 12
_BYTES_SLACK = 64 << 20


def decode_bytes(
    data: bytes, name: str, *, max_pixels: int, low_percentile: float, high_percentile: float
) -> DecodedImage:
    """Decode one DICOM, PNG or JPEG file held in memory.

    Args:
        data: the whole file.
        name: file name or URI, used only for format sniffing (suffix) and ``QuarantineError.name``.
        max_pixels: header-declared Rows*Columns*frames (or PNG/JPEG width*height) above this is
            rejected as ``too_large`` before any pixel buffer is allocated.
        low_percentile, high_percentile: the percentile window (0 <= low < high <= 100).

    Returns:
        :class:`DecodedImage` with pixels float32 (H, W) in [0, 1].

    Raises:
        QuarantineError: with a :class:`Reason`; never any other exception for bad input.
    """
    if not 0.0 <= low_percentile < high_percentile <= 100.0:
        raise ValueError("need 0 <= low_percentile < high_percentile <= 100")
    if len(data) == 0:
        raise QuarantineError(Reason.EMPTY_FILE, "the file is empty (0 bytes)", name)
    kwargs = dict(max_pixels=max_pixels, low_percentile=low_percentile, high_percentile=high_percentile)
    from grounding.data import dicom_decode

    # 'DICM' first: a DICOM preamble may itself hold another format's header (dual-format files).
    if data[128:132] == b"DICM":
        return dicom_decode.decode_dicom(data, name, **kwargs)
    if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
        from grounding.data import raster_decode

        return raster_decode.decode_raster(data, name, **kwargs)
    if dicom_decode.looks_like_dicom(data):  # raw dataset without preamble, or a cut preamble
        return dicom_decode.decode_dicom(data, name, **kwargs)
    if PurePosixPath(name.lower()).suffix in _RASTER_SUFFIXES:
        raise QuarantineError(Reason.BAD_IMAGE, "not a PNG or JPEG stream (bad magic bytes)", name)
    raise QuarantineError(
        Reason.NOT_DICOM, "not DICOM (no 'DICM' preamble or dataset start) and not PNG/JPEG", name
    )


def decode_file(path: str, *, max_pixels: int, low_percentile: float, high_percentile: float) -> DecodedImage:
    """:func:`decode_bytes` on a local path or a pyarrow URI (``grounding.data.storage.resolve``).

    A file bigger than any legal image of ``max_pixels`` is rejected (``too_large``) unread; I/O
    errors are ``unreadable``.
    """
    from grounding.data import storage

    limit = max_pixels * _BYTES_PER_PIXEL_BOUND + _BYTES_SLACK
    try:
        fs, inner = storage.resolve(path)
        size = fs.get_file_info(inner).size
        if size is not None and size > limit:
            raise QuarantineError(Reason.TOO_LARGE, "file is larger than any image of max_pixels", path)
        with fs.open_input_stream(inner) as stream:
            data = stream.read()
    except QuarantineError:
        raise
    except (OSError, ValueError) as err:  # missing file, permission, storage errors
        message = f"cannot read the file ({type(err).__name__})"
        raise QuarantineError(Reason.UNREADABLE, message, path) from None
    return decode_bytes(
        data, path, max_pixels=max_pixels, low_percentile=low_percentile, high_percentile=high_percentile
    )


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """Float [0, 1] (H, W) -> uint8 (size, size), anti-aliased, plain (anisotropic) resize.

    Downscaling uses an area (BOX) filter: every source pixel contributes, no ringing. Upscaling
    uses BICUBIC, clipped. Boxes map with ``grounding.data.boxes.scale_boxes((H, W), (size, size))``.
    """
    from PIL import Image

    arr = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"resize_uint8 needs a 2-D image, got shape {arr.shape}")
    h, w = arr.shape
    if (h, w) == (size, size):
        out = arr
    else:
        down = size <= h and size <= w
        filt = Image.Resampling.BOX if down else Image.Resampling.BICUBIC
        out = np.asarray(Image.fromarray(arr).resize((size, size), filt))
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float [0, 1] (H, W) -> uint8 (H, W) at the same size (for viewing)."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


# Keys of ``DecodedImage.info`` that ``inspect`` prints (all PHI-free by construction).
INSPECT_KEYS = (
    "source_format", "transfer_syntax", "transfer_syntax_name", "sop_class_name", "modality", "photometric",
    "presentation_lut_shape", "bits_stored", "bits_allocated", "voi", "window_low", "window_high", "inverted",
)


def inspect_file(
    path: str,
    *,
    max_pixels: int,
    low_percentile: float,
    high_percentile: float,
    png_path: str | None = None,
    png_size: int | None = None,
) -> dict[str, Any]:
    """Decode one file with :func:`decode_file` and describe it as one JSON-able record.

    Args:
        path: local path or URI.
        png_path: when set, the normalised image is written there as an 8-bit PNG (atomically);
            at original resolution, or resized by :func:`resize_uint8` to ``png_size`` if given.

    Returns:
        ``{"file", "status": "decoded", <INSPECT_KEYS>, "shape": [H, W], "min", "max", "mean"}``
        (statistics of the normalised image) or
        ``{"file", "status": "quarantined", "reason", "message"}``. No header identifier appears.
    """
    try:
        decoded = decode_file(
            path, max_pixels=max_pixels, low_percentile=low_percentile, high_percentile=high_percentile
        )
    except QuarantineError as err:
        return {"file": path, "status": "quarantined", "reason": err.reason.value, "message": err.message}
    info, pixels = decoded.info, decoded.pixels
    record: dict[str, Any] = {"file": path, "status": "decoded"}
    record.update({k: info.get(k) for k in INSPECT_KEYS})
    record["shape"] = [int(info["height"]), int(info["width"])]
    record.update(min=float(pixels.min()), max=float(pixels.max()), mean=round(float(pixels.mean()), 6))
    if png_path:
        from PIL import Image

        from grounding.data import storage

        image = resize_uint8(pixels, png_size) if png_size else to_uint8(pixels)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        storage.atomic_write_bytes(png_path, buf.getvalue())
        record["png"] = png_path
    return record
