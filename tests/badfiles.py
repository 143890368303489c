"""Writers of good and bad input files, one per kind, for the decoder and fault-tolerance tests.

Each ``make_<kind>(folder)`` writes one small file into ``folder`` and returns
``(path, expected_reason)``; ``expected_reason`` is a ``grounding.data.imaging.Reason`` or ``None`` when
the file must decode. ``MAKERS`` lists them all; ``write_all(folder)`` writes every kind.
Images are tiny (at most 96 x 80) so a test stays in milliseconds. Identity fields are fixed fake
strings (``FAKE_PATIENT_NAME``/``FAKE_PATIENT_ID``, unique enough to grep for in outputs).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from grounding.data.imaging import Reason

CR_SOP = "1.2.840.10008.5.1.4.1.1.1"
DX_SOP = "1.2.840.10008.5.1.4.1.1.1.1"
SC_SOP = "1.2.840.10008.5.1.4.1.1.7"
SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
SR_SOP = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
RTSTRUCT_SOP = "1.2.840.10008.5.1.4.1.1.481.3"
MPEG2_TS = "1.2.840.10008.1.2.4.100"  # a real transfer syntax no installed plugin decodes
PRIVATE_TS = "1.2.826.0.1.3680043.9.9999.1"  # made-up private transfer syntax
FAKE_PATIENT_NAME = "Zyxwvut^Canaryname"
FAKE_PATIENT_ID = "CANARY-PID-7351942"
HEIGHT, WIDTH = 96, 80  # non-square on purpose: catches transposed axes

Made = tuple[Path, "Reason | None"]


def chest_like(height: int = HEIGHT, width: int = WIDTH, max_value: int = 4095, seed: int = 0) -> np.ndarray:
    """A tiny chest-like image in MONOCHROME2 polarity (air dark, body/bone bright), uint16.

    Dark corners (air), a bright body ellipse, two darker lungs, a bright central spine strip.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = height / 2, width / 2
    body = ((y - cy) / (0.48 * height)) ** 2 + ((x - cx) / (0.42 * width)) ** 2 < 1
    lung_y = (y - 0.45 * height) / (0.3 * height)
    lung_x = (np.abs(x - cx) - 0.2 * width) / (0.12 * width)
    lungs = lung_y**2 + lung_x**2 < 1
    img = np.full((height, width), 0.05)
    img[body] = 0.7
    img[lungs] = 0.35
    img[:, int(cx - 0.06 * width) : int(cx + 0.06 * width)] = np.where(body, 0.95, 0.05)[
        :, int(cx - 0.06 * width) : int(cx + 0.06 * width)
    ]
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(np.round(img * max_value), 0, max_value).astype(np.uint16)


def radiograph_dataset(
    pixels: np.ndarray,
    *,
    sop: str = CR_SOP,
    modality: str = "CR",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_name: str = "Anon^Test",
    patient_id: str = "TEST0001",
) -> Dataset:
    """A minimal single-frame radiograph dataset with native (uncompressed) pixel data."""
    pixels = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SOPClassUID = UID(sop)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19010101"
    ds.InstitutionName = "Canary General Hospital"
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape[:2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def _save(ds: Dataset, path: Path, *, preamble: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:  # raw dataset, no preamble and no file meta (read only with force=True)
        del ds.file_meta
        ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path


def _jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _jpeg_dataset(pixels8: np.ndarray, stream: bytes) -> Dataset:
    ds = radiograph_dataset(pixels8, sop=SC_SOP, modality="CR", transfer_syntax=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    return ds


# -- good files ---------------------------------------------------------------------------------
def make_good_16bit(folder: Path) -> Made:
    """DX, 16 allocated / 12 stored, MONOCHROME2, uncompressed."""
    ds = radiograph_dataset(chest_like(), sop=DX_SOP, modality="DX", bits_stored=12)
    return _save(ds, folder / "good_16bit.dcm"), None


def make_good_8bit_jpeg(folder: Path) -> Made:
    """RSNA-like: secondary capture, modality CR, 8-bit JPEG Baseline."""
    pixels = (chest_like(max_value=255)).astype(np.uint8)
    return _save(_jpeg_dataset(pixels, _jpeg_bytes(pixels)), folder / "good_8bit_jpeg.dcm"), None


def make_good_8bit(folder: Path) -> Made:
    pixels = chest_like(max_value=255).astype(np.uint8)
    return _save(radiograph_dataset(pixels), folder / "good_8bit.dcm"), None


def make_monochrome1(folder: Path) -> Made:
    """CR MONOCHROME1 (stored = 4095 - MONOCHROME2 value): must decode with air dark."""
    ds = radiograph_dataset(4095 - chest_like(), photometric="MONOCHROME1", bits_stored=12)
    return _save(ds, folder / "monochrome1.dcm"), None


def make_no_preamble(folder: Path) -> Made:
    """A raw dataset without preamble/file meta (old archives): read with force, must decode."""
    return _save(radiograph_dataset(chest_like()), folder / "no_preamble.dcm", preamble=False), None


def make_canary(folder: Path) -> Made:
    """A good file whose identity fields are the unique fake strings (privacy tests grep for them)."""
    ds = radiograph_dataset(chest_like(), patient_name=FAKE_PATIENT_NAME, patient_id=FAKE_PATIENT_ID)
    return _save(ds, folder / "canary.dcm"), None


# -- bad files ----------------------------------------------------------------------------------
def make_empty(folder: Path) -> Made:
    path = folder / "empty.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path, Reason.EMPTY_FILE


def make_not_dicom(folder: Path) -> Made:
    path = folder / "not_dicom.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"This is a text file, not an image.\n" * 10)
    return path, Reason.NOT_DICOM


def make_truncated(folder: Path) -> Made:
    """The good 16-bit file cut at 60 % (inside the pixel data)."""
    good, _ = make_good_16bit(folder / "_src")
    data = good.read_bytes()
    path = folder / "truncated.dcm"
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path, Reason.TRUNCATED


def make_truncated_header(folder: Path) -> Made:
    """Cut inside the header, before the pixel data."""
    good, _ = make_good_16bit(folder / "_src")
    data = good.read_bytes()
    path = folder / "truncated_header.dcm"
    path.write_bytes(data[:300])
    return path, Reason.TRUNCATED


def make_no_pixels(folder: Path) -> Made:
    ds = radiograph_dataset(chest_like())
    del ds.PixelData
    return _save(ds, folder / "no_pixels.dcm"), Reason.NO_PIXELS


def make_seg(folder: Path) -> Made:
    ds = radiograph_dataset(np.zeros((8, 8), np.uint8), sop=SEG_SOP, modality="SEG")
    return _save(ds, folder / "seg.dcm"), Reason.NOT_RADIOGRAPH


def make_sr(folder: Path) -> Made:
    ds = radiograph_dataset(np.zeros((8, 8), np.uint8), sop=SR_SOP, modality="SR")
    for keyword in ("Rows", "Columns", "PixelData", "BitsAllocated", "BitsStored", "HighBit"):
        delattr(ds, keyword)
    return _save(ds, folder / "sr.dcm"), Reason.NOT_RADIOGRAPH


def make_rtstruct(folder: Path) -> Made:
    ds = radiograph_dataset(np.zeros((8, 8), np.uint8), sop=RTSTRUCT_SOP, modality="RTSTRUCT")
    del ds.PixelData
    return _save(ds, folder / "rtstruct.dcm"), Reason.NOT_RADIOGRAPH


def make_ct_modality(folder: Path) -> Made:
    """Secondary capture whose modality is CT: not a radiograph."""
    ds = radiograph_dataset(chest_like(), sop=SC_SOP, modality="CT")
    return _save(ds, folder / "sc_ct.dcm"), Reason.NOT_RADIOGRAPH


def make_unsupported_ts(folder: Path) -> Made:
    """A real transfer syntax (MPEG2) with no installed decoder."""
    ds = _jpeg_dataset(np.zeros((16, 16), np.uint8), b"\x00" * 64)
    ds.file_meta.TransferSyntaxUID = UID(MPEG2_TS)
    return _save(ds, folder / "mpeg2_ts.dcm"), Reason.UNSUPPORTED_TRANSFER_SYNTAX


def make_private_ts(folder: Path) -> Made:
    """An unknown private transfer syntax UID (dataset itself encoded explicit VR little endian)."""
    ds = radiograph_dataset(chest_like())
    ds.file_meta.TransferSyntaxUID = UID(PRIVATE_TS)
    path = folder / "private_ts.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return path, Reason.UNSUPPORTED_TRANSFER_SYNTAX


def make_corrupt_jpeg(folder: Path) -> Made:
    """JPEG Baseline DICOM whose JPEG stream has its markers destroyed (SOI kept)."""
    pixels = chest_like(max_value=255).astype(np.uint8)
    stream = bytearray(_jpeg_bytes(pixels))
    rng = np.random.default_rng(1)
    stream[2:] = rng.integers(0, 255, len(stream) - 2, dtype=np.uint8).tobytes().replace(b"\xff", b"\x00")
    return _save(_jpeg_dataset(pixels, bytes(stream)), folder / "corrupt_jpeg.dcm"), Reason.DECODE_ERROR


def make_huge(folder: Path) -> Made:
    """A header declaring 65535 x 65535 (the US maximum; 100000 cannot be stored) with 1 KB pixels."""
    ds = radiograph_dataset(np.zeros((4, 4), np.uint16))
    ds.Rows, ds.Columns = 65535, 65535
    ds.PixelData = b"\x00" * 1024
    return _save(ds, folder / "huge.dcm"), Reason.TOO_LARGE


def make_huge_png(folder: Path) -> Made:
    """A PNG whose IHDR declares 100000 x 100000 with a tiny (invalid) payload."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path = folder / "huge.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, Reason.TOO_LARGE


def make_multiframe(folder: Path) -> Made:
    frames = np.stack([chest_like(), chest_like(seed=1)])
    ds = radiograph_dataset(frames[0], sop=DX_SOP, modality="DX")
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    return _save(ds, folder / "multiframe.dcm"), Reason.MULTIFRAME


def make_rgb(folder: Path) -> Made:
    rgb = np.repeat(chest_like(max_value=255).astype(np.uint8)[..., None], 3, axis=2)
    ds = radiograph_dataset(rgb[..., 0], sop=SC_SOP, modality="CR", photometric="RGB")
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.PixelData = rgb.tobytes()
    return _save(ds, folder / "rgb.dcm"), Reason.COLOR


def make_constant(folder: Path) -> Made:
    ds = radiograph_dataset(np.full((HEIGHT, WIDTH), 1000, np.uint16), bits_stored=12)
    return _save(ds, folder / "constant.dcm"), Reason.DEGENERATE_INTENSITY


def make_truncated_png(folder: Path) -> Made:
    buf = io.BytesIO()
    Image.fromarray(chest_like(max_value=255).astype(np.uint8)).save(buf, format="PNG")
    path = folder / "truncated.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path, Reason.BAD_IMAGE


MAKERS: dict[str, Callable[[Path], Made]] = {
    name[len("make_") :]: fn
    for name, fn in sorted(globals().items())
    if name.startswith("make_") and callable(fn)
}


def write_all(folder: Path) -> list[Made]:
    """Write every kind into ``folder``; returns ``[(path, expected_reason_or_None), ...]``."""
    return [maker(Path(folder)) for maker in MAKERS.values()]
