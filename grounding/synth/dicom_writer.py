"""Real DICOM Part 10 files for the synthetic sites, with a FAKE but realistic patient identity.

- Site A: CR Image Storage, MONOCHROME2, 8 bits, JPEG Baseline (Pillow + ``encapsulate``).
- Site B: 16 bits allocated, 12 stored. MONOCHROME2 files are DX (For Presentation,
  ``PresentationLUTShape`` IDENTITY); MONOCHROME1 files are CR (no Presentation LUT, so a reader
  inverts exactly once). Explicit VR Little Endian, or RLE Lossless (``ds.compress``).

The identity (names, ids, dates, institution, accession) is generated from the image's RNG so the
privacy checks of the pipeline have something real-looking to catch; it is fake.
"""

from __future__ import annotations

import io
from datetime import date, timedelta

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

from grounding.data.storage import atomic_write_bytes

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
_UID_PREFIX = "1.2.826.0.1.3680043.10.1147."  # a private test root; never a real device's

_FIRST = ["JOHN", "MARY", "AHMED", "LI", "SOFIA", "OLUWASEUN", "PIOTR", "AIKO", "CARLOS", "INGRID",
          "RAVI", "FATIMA", "JAMES", "ELENA", "KWAME", "YUKI", "MARTA", "DMITRI", "NOOR", "LUCA"]
_LAST = ["QUILLFEATHER", "BRAMBLEWICK", "OSTERVALD", "KESTRELMOOR", "VANTREIGHT", "MERRIDOWNE",
         "HOLLOWAYNE", "FENWICKSEN", "DARROWGATE", "SILVERTHORNE", "ASHCOMBELY", "TRELAWNEYS"]
_INSTITUTIONS = ["SYNTHETIC GENERAL HOSPITAL NORTH", "FICTIONAL COUNTY MEDICAL CENTER",
                 "IMAGINARY UNIVERSITY HOSPITAL", "MADE-UP REGIONAL INFIRMARY"]


def fake_identity(rng: np.random.Generator, study_day: int) -> dict[str, str]:
    """PatientName/ID/BirthDate/Sex, StudyDate, AccessionNumber, InstitutionName, ReferringPhysician.

    ``study_day`` offsets the study date (days after the patient's first study).
    """
    birth = date(1930, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 70)))
    first = date(2012, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 10)))
    return {
        "PatientName": f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}",
        "PatientID": f"ZX{int(rng.integers(10**7, 10**8))}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": str(rng.choice(["F", "M"])),
        "StudyDate": (first + timedelta(days=study_day)).strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}00",
        "AccessionNumber": f"ACC{int(rng.integers(10**8, 10**9))}",
        "InstitutionName": str(rng.choice(_INSTITUTIONS)),
        "ReferringPhysicianName": f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}^^DR",
    }


def uid(*parts: object) -> str:
    """Deterministic UID from the given parts (same parts, same UID)."""
    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def build_dataset(pixels: np.ndarray, *, photometric: str, bits_stored: int, sop_class: str,
                  identity: dict[str, str], uids: dict[str, str], view: str,
                  window: tuple[float, float] | None = None) -> Dataset:
    """A complete uncompressed (Explicit VR LE) dataset for one radiograph.

    Args:
        pixels: (rows, cols) uint8 or uint16 stored values (already inverted for MONOCHROME1).
        uids: ``study``, ``series``, ``sop``.
        window: optional (center, width) VOI window in stored values.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["sop"]
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.Modality = "DX" if sop_class == DX_PRESENTATION_STORAGE else "CR"
    for key, value in identity.items():
        setattr(ds, key, value)
    ds.SeriesDate = ds.ContentDate = identity["StudyDate"]
    ds.ContentTime = identity["StudyTime"]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "SYNTHETIC"
    ds.StudyDescription = "CHEST 1 VIEW" if view == "AP" else "CHEST PA"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"]  # frontal chest as displayed: rows run to patient left, columns to feet
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.KVP = "110" if view == "PA" else "90"
    spacing = f"{430.0 / pixels.shape[1]:.4f}"
    if ds.Modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "IDENTITY"
        ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter = f"{window[0]:.1f}"
        ds.WindowWidth = f"{window[1]:.1f}"
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def encode_jpeg_baseline(ds: Dataset, pixels: np.ndarray, quality: int) -> None:
    """Replace the pixel data by a JPEG Baseline (8-bit) encapsulated frame, encoded with Pillow."""
    if pixels.dtype != np.uint8:
        raise ValueError("JPEG Baseline needs 8-bit pixels")
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=int(quality))
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(path: str, pixels: np.ndarray, *, transfer: str, photometric: str, bits_stored: int,
          sop_class: str, identity: dict[str, str], uids: dict[str, str], view: str,
          window: tuple[float, float] | None = None, jpeg_quality: int = 90) -> str:
    """Write one DICOM file atomically; ``transfer`` is 'jpeg' | 'explicit' | 'rle'. Returns the TS UID."""
    ds = build_dataset(pixels, photometric=photometric, bits_stored=bits_stored, sop_class=sop_class,
                       identity=identity, uids=uids, view=view, window=window)
    if transfer == "jpeg":
        encode_jpeg_baseline(ds, pixels, jpeg_quality)
    elif transfer == "rle":
        ds.compress(RLELossless, pixels, generate_instance_uid=False)  # keep the deterministic UID
    elif transfer != "explicit":
        raise ValueError(f"unknown transfer '{transfer}' (jpeg | explicit | rle)")
    atomic_write_bytes(path, to_bytes(ds))
    return str(ds.file_meta.TransferSyntaxUID)


def write_canary_dicom(path: str, phi: dict[str, str], size: int = 256) -> None:
    """One valid chest DICOM (CR, MONOCHROME2, 16/12-bit, uncompressed) carrying the given strings.

    ``phi`` keys: PatientName, PatientID, PatientBirthDate, StudyDate, InstitutionName,
    AccessionNumber (missing ones get neutral values). Used by the privacy test: none of these
    strings may appear in any output of the pipeline.
    """
    from grounding.synth.render import render_image  # local: keeps this module light

    rng = np.random.default_rng(12345)
    display, _ = render_image(rng, size, size, positive=False, site="A")
    pixels = (np.clip(display, 0, 1) * 4095).round().astype(np.uint16)
    identity = fake_identity(rng, 0)
    identity.update({k: str(v) for k, v in phi.items()})
    tag = "".join(str(v) for v in phi.values())
    uids = {"study": uid("canary-study", tag), "series": uid("canary-series", tag), "sop": uid("canary-sop", tag)}
    write(path, pixels, transfer="explicit", photometric="MONOCHROME2", bits_stored=12, sop_class=CR_STORAGE,
          identity=identity, uids=uids, view="PA")
