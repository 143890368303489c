"""DICOM bytes -> normalised radiograph (the DICOM half of ``grounding.data.imaging``).

Two passes over the bytes:

1. header only (``stop_before_pixels=True``): SOP class / modality allow-list, declared size
   against ``max_pixels``, frames, colour, transfer syntax with an installed decoder. Nothing
   large is allocated before these checks pass.
2. full read, ``pixel_array`` (pydicom 3 with the pylibjpeg plugins), modality LUT, then the
   shared percentile window and polarity of ``grounding.data.imaging.normalise_intensity``.

pydicom warnings and log records can carry file names and header values, so both are silenced
here; exception texts from pydicom are never copied into our messages.
"""

from __future__ import annotations

import io
import logging
import warnings
from functools import lru_cache
from typing import Any

from grounding.data.decoded import DecodedImage, QuarantineError, Reason, normalise_intensity

# SOP classes we treat as single-frame projection radiographs.
RADIOGRAPH_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "DX Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",  # RSNA challenge files
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte SC Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word SC Image Storage",
}
# CR/DX SOP classes imply the modality; a secondary capture must say CR or DX itself.
_IMPLIES_MODALITY = {uid for uid, name in RADIOGRAPH_SOP_CLASSES.items() if name.startswith(("CR ", "DX "))}
RADIOGRAPH_MODALITIES = ("CR", "DX")
_CANDIDATE_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless P14
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_TRUNCATION_HINTS = (
    "less than expected", "end of file", "unexpected eof", "truncat", "unpack requires a buffer",
)


def silence_pydicom() -> None:
    """Keep pydicom log records (which can quote header values and file names) out of every log."""
    # pydicom logs e.g. "Invalid value for VR ..." with the value itself; keep it out of job logs.
    logger = logging.getLogger("pydicom")
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


silence_pydicom()


@lru_cache(maxsize=1)
def supported_transfer_syntaxes() -> dict[str, str]:
    """``{uid: name}`` of the transfer syntaxes an installed pydicom plugin can decode here."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    out = {}
    for uid in _CANDIDATE_TRANSFER_SYNTAXES:
        try:
            if get_decoder(UID(uid)).is_available:
                out[uid] = UID(uid).name
        except (NotImplementedError, ValueError):
            continue
    return out


def looks_like_dicom(data: bytes) -> bool:
    """'DICM' at byte 128, or a raw dataset (no preamble) starting with group 0x0002 or 0x0008."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if 4 <= len(data) < 132 and not any(data[:128]) and b"DICM".startswith(data[128:]):
        return True  # a preamble of zeros cut short: a truncated DICOM, not something else
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3] == 0:
        vr = data[4:6]
        # explicit VR (two capital letters) or implicit VR (4-byte length that fits in the file)
        return vr.isalpha() and vr.isupper() or int.from_bytes(data[4:8], "little") < len(data)
    return False


def _read(data: bytes, name: str, header_only: bool):
    """dcmread on the bytes; truncation is detected structurally (pydicom reads short values silently)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    force = data[128:132] != b"DICM"
    if len(data) < 132 and not any(data[:128]) and b"DICM".startswith(data[128:]):
        raise QuarantineError(Reason.TRUNCATED, "file ends inside the 128-byte preamble", name)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only, force=force)
    except InvalidDicomError:
        if not force and len(data) < 256:  # 'DICM' present but the file meta is cut
            raise QuarantineError(Reason.TRUNCATED, "file ends inside the file meta", name) from None
        raise QuarantineError(Reason.NOT_DICOM, "not a DICOM file (invalid preamble/meta)", name) from None
    except (EOFError, OSError) as err:
        message = f"file ends inside the header ({type(err).__name__})"
        raise QuarantineError(Reason.TRUNCATED, message, name) from None
    except Exception as err:  # noqa: BLE001 - any parser failure is this file's problem, not the job's
        cut = _looks_truncated(err) or (not force and len(data) < 256)
        reason = Reason.TRUNCATED if cut else Reason.NOT_DICOM
        message = f"DICOM header could not be parsed ({type(err).__name__})"
        raise QuarantineError(reason, message, name) from None
    if _is_cut_short(ds, len(data), [str(w.message) for w in caught]):
        raise QuarantineError(Reason.TRUNCATED, "file ends before the last data element is complete", name)
    return ds


def _is_cut_short(ds, size: int, warning_texts: list[str]) -> bool:
    """True when the bytes end inside a data element (pydicom returns what it read, no error)."""
    if any(h in text.lower() for text in warning_texts for h in _TRUNCATION_HINTS):  # undefined lengths
        return True
    tags = list(ds.keys())
    if not tags:
        return True  # file meta only: the dataset itself is missing
    last = ds.get_item(max(tags))
    length, tell, value = (getattr(last, k, None) for k in ("length", "value_tell", "value"))
    if length is None or tell is None or length == 0xFFFFFFFF:
        return False
    if isinstance(value, (bytes, bytearray)) and len(value) < length:
        return True  # last value shorter than its declared length
    return 0 < size - (tell + length) < 8  # a tag header cut in the middle


def _looks_truncated(err: BaseException) -> bool:
    text = str(err).lower()  # inspected here only; never copied into a message
    return isinstance(err, EOFError) or any(h in text for h in _TRUNCATION_HINTS)


def _transfer_syntax(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if uid:
        return uid
    # No file meta (raw dataset read with force): take the encoding pydicom detected.
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is False:
        return "1.2.840.10008.1.2.2"
    return "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"


def _int(ds, keyword: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(keyword, None)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


def _check_header(ds, name: str, max_pixels: int) -> dict[str, Any]:
    """Every check that needs no pixels. Returns the safe part of ``info``."""
    from pydicom.uid import UID

    sop = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop and sop not in RADIOGRAPH_SOP_CLASSES:
        known = UID(sop).name if UID(sop).is_valid and UID(sop).name != sop else "an unknown SOP class"
        message = f"SOP class '{known}' is not CR/DX/secondary capture"
        raise QuarantineError(Reason.NOT_RADIOGRAPH, message, name)
    if modality not in RADIOGRAPH_MODALITIES and not (modality == "" and sop in _IMPLIES_MODALITY):
        raise QuarantineError(Reason.NOT_RADIOGRAPH, "modality is not CR or DX", name)
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None or rows <= 0 or cols <= 0:
        raise QuarantineError(Reason.NO_PIXELS, "no image dimensions (Rows/Columns missing)", name)
    frames = max(1, _int(ds, "NumberOfFrames", 1) or 1)
    samples = max(1, _int(ds, "SamplesPerPixel", 1) or 1)
    if rows * cols * frames > max_pixels:
        raise QuarantineError(Reason.TOO_LARGE, f"declared size exceeds max_pixels={max_pixels}", name)
    if frames > 1:
        raise QuarantineError(Reason.MULTIFRAME, "multi-frame image (NumberOfFrames > 1)", name)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples > 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if samples > 1 or photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR"):
            raise QuarantineError(Reason.COLOR, "colour image (not MONOCHROME1/2)", name)
        raise QuarantineError(Reason.DECODE_ERROR, "photometric interpretation is not MONOCHROME1/2", name)
    bits_allocated = _int(ds, "BitsAllocated")
    if bits_allocated not in (8, 16, 32, 64):
        raise QuarantineError(Reason.DECODE_ERROR, "BitsAllocated is not 8/16/32/64", name)
    ts = _transfer_syntax(ds)
    supported = supported_transfer_syntaxes()
    if ts not in supported:
        known = UID(ts).name if UID(ts).is_valid and UID(ts).name != ts else "an unknown/private one"
        raise QuarantineError(
            Reason.UNSUPPORTED_TRANSFER_SYNTAX, f"transfer syntax '{known}' has no installed decoder", name
        )
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return {
        "source_format": "dicom",
        "transfer_syntax": ts,
        "transfer_syntax_name": supported[ts],
        "sop_class_name": RADIOGRAPH_SOP_CLASSES.get(sop, ""),
        "modality": modality or ("DX" if ".1.1.1.1" in sop else "CR"),
        "photometric": photometric,
        "presentation_lut_shape": shape if shape in ("IDENTITY", "INVERSE") else "",
        "bits_allocated": bits_allocated,
        "bits_stored": _int(ds, "BitsStored", bits_allocated),
        "height": rows,
        "width": cols,
    }


def decode_dicom(
    data: bytes, name: str, *, max_pixels: int, low_percentile: float, high_percentile: float
) -> DecodedImage:
    """Decode and normalise one DICOM radiograph (see ``grounding.data.imaging`` for the policy).

    Returns:
        :class:`DecodedImage`, pixels float32 (Rows, Columns) in [0, 1], air dark.

    Raises:
        QuarantineError: every failure, with a PHI-free message.
    """
    header = _read(data, name, header_only=True)
    info = _check_header(header, name, max_pixels)
    ds = _read(data, name, header_only=False)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise QuarantineError(Reason.NO_PIXELS, "the dataset has no Pixel Data element", name)
    if ds.file_meta.get("TransferSyntaxUID") is None:  # raw dataset read with force=True
        from pydicom.uid import UID

        ds.file_meta.TransferSyntaxUID = UID(info["transfer_syntax"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = ds.pixel_array
            from pydicom.pixels import apply_modality_lut

            values = apply_modality_lut(stored, ds)
    except MemoryError:
        raise QuarantineError(Reason.TOO_LARGE, "out of memory while decoding", name) from None
    except Exception as err:  # noqa: BLE001 - codec errors come in many types
        # Cut files were caught by _read; a codec's own "EOF" text means a corrupt stream.
        short = isinstance(err, ValueError) and "less than expected" in str(err)
        reason = Reason.TRUNCATED if short else Reason.DECODE_ERROR
        message = f"pixel data could not be decoded ({type(err).__name__})"
        raise QuarantineError(reason, message, name) from None
    if values.shape != (info["height"], info["width"]):
        raise QuarantineError(Reason.DECODE_ERROR, "decoded shape does not match Rows/Columns", name)
    invert = info["photometric"] == "MONOCHROME1" or info["presentation_lut_shape"] == "INVERSE"
    pixels, window = normalise_intensity(
        values, low_percentile=low_percentile, high_percentile=high_percentile, invert=invert, name=name
    )
    info.update(window)
    info["voi"] = f"modality_lut+{window['voi']}"
    return DecodedImage(pixels=pixels, info=info)
