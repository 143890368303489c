"""PNG / JPEG bytes -> normalised grey radiograph (ChestX-ray8, COVID-19 collection, MIMIC-CXR-JPG).

Pillow reads the header lazily, so the declared size is checked against ``max_pixels`` before any
pixel buffer exists (decompression-bomb safe, independent of Pillow's global MAX_IMAGE_PIXELS).
Colour (RGB, RGBA, P, LA, CMYK) becomes grey by ITU-R 601 luma; alpha is dropped. 16-bit grey
keeps its 16 bits. The same percentile window as DICOM then makes the datasets look alike.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from grounding.data.decoded import DecodedImage, QuarantineError, Reason, normalise_intensity

_GREY_MODES = ("L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F", "1")
_BITS = {"1": 1, "L": 8, "P": 8, "LA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "F": 32, "I": 32}


def decode_raster(
    data: bytes, name: str, *, max_pixels: int, low_percentile: float, high_percentile: float
) -> DecodedImage:
    """Decode one PNG or JPEG.

    Returns:
        :class:`DecodedImage`, pixels float32 (H, W) in [0, 1]; ``info['photometric']`` is the
        Pillow mode as stored (e.g. 'RGB', 'RGBA', 'L', 'I;16').

    Raises:
        QuarantineError: ``too_large`` (before decoding), ``bad_image`` (Pillow failed),
            ``degenerate_intensity`` (constant image).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF noise
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                message = f"declared size exceeds max_pixels={max_pixels}"
                raise QuarantineError(Reason.TOO_LARGE, message, name)
            mode, fmt = image.mode, (image.format or "").lower()
            image.load()
            grey = image if mode in _GREY_MODES else image.convert("RGB").convert("L")
            values = np.asarray(grey)
    except QuarantineError:
        raise
    except Image.DecompressionBombError:
        raise QuarantineError(Reason.TOO_LARGE, "Pillow decompression-bomb guard", name) from None
    except MemoryError:
        raise QuarantineError(Reason.TOO_LARGE, "out of memory while decoding", name) from None
    except Exception as err:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ...
        message = f"PNG/JPEG could not be decoded ({type(err).__name__})"
        raise QuarantineError(Reason.BAD_IMAGE, message, name) from None
    if values.ndim != 2 or values.shape != (height, width):
        raise QuarantineError(Reason.BAD_IMAGE, "decoded image is not a single (H, W) plane", name)
    if values.dtype == bool:
        values = values.astype(np.uint8)
    pixels, window = normalise_intensity(
        values, low_percentile=low_percentile, high_percentile=high_percentile, invert=False, name=name
    )
    bits = 16 if mode.startswith("I;16") else _BITS.get(mode, 8)
    info = {
        "source_format": "jpeg" if fmt in ("jpeg", "mpo") else "png",
        "transfer_syntax": None,
        "transfer_syntax_name": "",
        "sop_class_name": "",
        "modality": "",
        "photometric": mode,
        "presentation_lut_shape": "",
        "bits_allocated": bits,
        "bits_stored": bits,
        "height": int(height),
        "width": int(width),
        **window,
    }
    return DecodedImage(pixels=pixels, info=info)
