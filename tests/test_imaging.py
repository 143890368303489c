"""Decoder: real radiographs decode, every bad kind gets its reason, polarity, VOI policy, resize."""

from __future__ import annotations

import io
import logging
import pickle
import time
import tracemalloc
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from grounding.data.boxes import scale_boxes
from grounding.data.imaging import (
    DecodedImage,
    QuarantineError,
    Reason,
    decode_bytes,
    decode_file,
    normalise_intensity,
    resize_uint8,
)

import badfiles

KW = dict(max_pixels=8192 * 8192, low_percentile=0.5, high_percentile=99.5)
REAL_RADIOGRAPHS = [
    "RG1_J2KI.dcm", "RG1_J2KR.dcm", "RG1_UNCR.dcm", "RG2_JLSL.dcm", "RG2_JPLL.dcm", "RG2_JPLY_fixed.dcm",
    "RSNA_00436515_RLE_from_JPEGBaseline.dcm", "siim_pneumothorax_example.dcm",
]


@lru_cache(maxsize=None)
def _decode_real(path: str) -> DecodedImage:
    """Each real (multi-megapixel) file is decoded once per session; tests must not mutate the result."""
    return decode_file(path, **KW)


def _dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _check_image(decoded: DecodedImage, shape: tuple[int, int]) -> None:
    p = decoded.pixels
    assert isinstance(decoded, DecodedImage)
    assert p.dtype == np.float32 and p.shape == shape
    assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0
    assert p.max() - p.min() > 0.5  # a real window, not a flat image
    assert (decoded.info["height"], decoded.info["width"]) == shape


# -- real files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REAL_RADIOGRAPHS)
def test_real_radiographs_decode(shared_data: Path, name: str) -> None:
    path = shared_data / "dicom" / name
    header = pydicom.dcmread(path, stop_before_pixels=True)
    decoded = _decode_real(str(path))
    _check_image(decoded, (int(header.Rows), int(header.Columns)))
    info = decoded.info
    assert info["source_format"] == "dicom"
    assert info["transfer_syntax"] == str(header.file_meta.TransferSyntaxUID)
    assert info["photometric"] == header.PhotometricInterpretation
    assert info["bits_stored"] == header.BitsStored and info["modality"] == header.Modality
    assert info["inverted"] == (header.PhotometricInterpretation == "MONOCHROME1")


def test_rsna_sample_decodes(shared_data: Path) -> None:
    files = sorted((shared_data / "rsna" / "stage_1_train_images").glob("*.dcm"))
    assert len(files) >= 10
    for path in files:
        _check_image(decode_file(str(path), **KW), (1024, 1024))


def test_j2k_lossless_is_pixel_identical_to_uncompressed(shared_data: Path) -> None:
    j2k, unc = shared_data / "dicom" / "RG1_J2KR.dcm", shared_data / "dicom" / "RG1_UNCR.dcm"
    np.testing.assert_array_equal(pydicom.dcmread(j2k).pixel_array, pydicom.dcmread(unc).pixel_array)
    a, b = _decode_real(str(j2k)), _decode_real(str(unc))
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.info["transfer_syntax"] != b.info["transfer_syntax"]


def test_monochrome1_real_image_has_air_dark_bone_bright(shared_data: Path) -> None:
    pixels = _decode_real(str(shared_data / "dicom" / "RG1_UNCR.dcm")).pixels
    h, w = pixels.shape

    def region(y0: float, y1: float, x0: float, x1: float) -> float:
        return float(pixels[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].mean())

    spine = region(0.3, 0.7, 0.46, 0.54)
    lungs = [region(0.25, 0.55, 0.2, 0.35), region(0.25, 0.55, 0.65, 0.8)]
    corners = [region(y, y + 0.05, x, x + 0.05) for y in (0, 0.95) for x in (0, 0.95)]
    assert spine > 0.8
    assert all(v < spine - 0.3 for v in lungs + corners)


def test_seg_object_is_not_a_radiograph(shared_data: Path) -> None:
    with pytest.raises(QuarantineError) as err:
        decode_file(str(shared_data / "dicom" / "seg_image_cr_binary.dcm"), **KW)
    assert err.value.reason is Reason.NOT_RADIOGRAPH


def test_covid_png_and_jpeg_decode(shared_data: Path) -> None:
    seen = set()
    for path in sorted((shared_data / "covid" / "images").iterdir()):
        with Image.open(path) as im:
            key = (im.format, im.mode)
            size = im.size
        if key in seen:
            continue
        seen.add(key)
        decoded = decode_file(str(path), **KW)
        _check_image(decoded, (size[1], size[0]))
        assert decoded.info["photometric"] == key[1]
        assert decoded.info["source_format"] == key[0].lower()
    assert {("PNG", "RGB"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("JPEG", "L")} <= seen


# -- every bad kind -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(badfiles.MAKERS))
def test_each_file_kind_gets_its_reason(tmp_path: Path, kind: str) -> None:
    path, expected = badfiles.MAKERS[kind](tmp_path)
    if expected is None:
        decoded = decode_file(str(path), **KW)
        assert np.isfinite(decoded.pixels).all() and decoded.pixels.max() > decoded.pixels.min()
        return
    with pytest.raises(QuarantineError) as err:
        decode_file(str(path), **KW)
    assert err.value.reason is expected, err.value.message
    assert str(path) not in err.value.message and str(path) in str(err.value)


def test_quarantine_messages_hold_no_identity_and_pickle(tmp_path: Path) -> None:
    ds = badfiles.radiograph_dataset(
        badfiles.chest_like(), sop=badfiles.SEG_SOP, modality="SEG",
        patient_name=badfiles.FAKE_PATIENT_NAME, patient_id=badfiles.FAKE_PATIENT_ID,
    )
    with pytest.raises(QuarantineError) as err:
        decode_bytes(_dicom_bytes(ds), "x.dcm", **KW)
    text = str(err.value) + err.value.message
    assert badfiles.FAKE_PATIENT_NAME.split("^")[0] not in text and badfiles.FAKE_PATIENT_ID not in text
    copy = pickle.loads(pickle.dumps(err.value))
    assert (copy.reason, copy.message, copy.name) == (Reason.NOT_RADIOGRAPH, err.value.message, "x.dcm")


def test_corrupt_stream_emits_no_warnings_or_pydicom_logs(tmp_path: Path, caplog) -> None:
    path, _ = badfiles.make_corrupt_jpeg(tmp_path)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping the decoder fails the test
        with pytest.raises(QuarantineError):
            decode_file(str(path), **KW)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


def test_every_cut_of_a_file_is_quarantined_never_crashes(tmp_path: Path) -> None:
    path, _ = badfiles.make_good_8bit_jpeg(tmp_path)
    data = path.read_bytes()
    reasons = []
    for cut in range(1, len(data) - 8, 7):
        with pytest.raises(QuarantineError) as err:
            decode_bytes(data[:cut], "cut.dcm", **KW)
        reasons.append(err.value.reason)
    assert reasons.count(Reason.TRUNCATED) > 0.9 * len(reasons)


def test_huge_header_rejected_fast_without_allocation(tmp_path: Path) -> None:
    data = badfiles.make_huge(tmp_path)[0].read_bytes()
    decode_bytes(badfiles.make_good_16bit(tmp_path)[0].read_bytes(), "warm.dcm", **KW)  # warm imports
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(QuarantineError) as err:
            decode_bytes(data, "huge.dcm", **KW)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.reason is Reason.TOO_LARGE
    assert peak < 50e6 and elapsed < 0.5


def test_raster_size_checked_before_pixels_are_loaded(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((2000, 3000), np.uint8)).save(buf, format="PNG")
    tracemalloc.start()
    try:
        with pytest.raises(QuarantineError) as err:
            decode_bytes(buf.getvalue(), "big.png", **{**KW, "max_pixels": 1000 * 1000})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.reason is Reason.TOO_LARGE and "max_pixels" in err.value.message
    assert peak < 3e6  # the 6 MB image was never decoded


def test_max_pixels_boundary(tmp_path: Path) -> None:
    data = badfiles.make_good_16bit(tmp_path)[0].read_bytes()
    n = badfiles.HEIGHT * badfiles.WIDTH
    decode_bytes(data, "a.dcm", **{**KW, "max_pixels": n})
    with pytest.raises(QuarantineError, match="max_pixels"):
        decode_bytes(data, "a.dcm", **{**KW, "max_pixels": n - 1})


# -- intensity policy ---------------------------------------------------------------------------
@pytest.mark.parametrize("window", [(0.5, 99.5), (2.0, 99.0), (0.0, 100.0)])
def test_monochrome1_and_monochrome2_twins_are_equal(window: tuple[float, float]) -> None:
    stored2 = badfiles.chest_like()
    stored1 = 4095 - stored2
    kw = dict(max_pixels=10**6, low_percentile=window[0], high_percentile=window[1])
    m2 = decode_bytes(_dicom_bytes(badfiles.radiograph_dataset(stored2, bits_stored=12)), "m2.dcm", **kw)
    ds1 = badfiles.radiograph_dataset(stored1, photometric="MONOCHROME1", bits_stored=12)
    m1 = decode_bytes(_dicom_bytes(ds1), "m1.dcm", **kw)
    np.testing.assert_allclose(m1.pixels, m2.pixels, atol=1e-6)
    assert m1.info["inverted"] and not m2.info["inverted"]
    # air (corners) dark, spine bright
    assert m1.pixels[:5, :5].mean() < 0.2 and m1.pixels[40:60, 38:42].mean() > 0.8


def test_presentation_lut_inverse_is_honoured_once() -> None:
    stored2 = badfiles.chest_like()
    plain = decode_bytes(_dicom_bytes(badfiles.radiograph_dataset(stored2)), "a.dcm", **KW).pixels
    ds = badfiles.radiograph_dataset(4095 - stored2)
    ds.PresentationLUTShape = "INVERSE"
    np.testing.assert_allclose(decode_bytes(_dicom_bytes(ds), "b.dcm", **KW).pixels, plain, atol=1e-6)
    ds.PhotometricInterpretation = "MONOCHROME1"  # DX rule: MONOCHROME1 carries INVERSE; invert once
    np.testing.assert_allclose(decode_bytes(_dicom_bytes(ds), "c.dcm", **KW).pixels, plain, atol=1e-6)


def test_negative_rescale_slope_is_applied() -> None:
    stored = badfiles.chest_like()
    plain = decode_bytes(_dicom_bytes(badfiles.radiograph_dataset(stored)), "a.dcm", **KW)
    ds = badfiles.radiograph_dataset(4095 - stored)
    ds.RescaleSlope, ds.RescaleIntercept = -1, 4095
    flipped = decode_bytes(_dicom_bytes(ds), "b.dcm", **KW)
    np.testing.assert_allclose(flipped.pixels, plain.pixels, atol=1e-6)
    assert flipped.info["window_low"] == pytest.approx(plain.info["window_low"])


def test_unused_high_bits_are_ignored() -> None:
    stored = badfiles.chest_like()  # 12-bit values
    clean = decode_bytes(_dicom_bytes(badfiles.radiograph_dataset(stored, bits_stored=12)), "a.dcm", **KW)
    dirty = (stored | 0xA000).astype(np.uint16)  # garbage above bit 12
    noisy = decode_bytes(_dicom_bytes(badfiles.radiograph_dataset(dirty, bits_stored=12)), "b.dcm", **KW)
    np.testing.assert_array_equal(noisy.pixels, clean.pixels)


def test_sixteen_bit_png_matches_the_dicom_with_the_same_values() -> None:
    stored = badfiles.chest_like() * 16  # 16-bit range
    buf = io.BytesIO()
    Image.fromarray(stored.astype(np.uint16)).save(buf, format="PNG")
    png = decode_bytes(buf.getvalue(), "a.png", **KW)
    dcm = decode_bytes(_dicom_bytes(badfiles.radiograph_dataset(stored)), "a.dcm", **KW)
    assert png.info["bits_stored"] == 16 and png.info["photometric"].startswith("I")
    np.testing.assert_allclose(png.pixels, dcm.pixels, atol=1e-6)


def test_rgba_png_uses_colour_not_alpha() -> None:
    grey = badfiles.chest_like(max_value=255).astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 7)])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    ref = io.BytesIO()
    Image.fromarray(grey).save(ref, format="PNG")
    a, b = decode_bytes(buf.getvalue(), "a.png", **KW), decode_bytes(ref.getvalue(), "b.png", **KW)
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-6)
    assert a.info["photometric"] == "RGBA"


def test_mostly_constant_image_falls_back_to_minmax() -> None:
    values = np.zeros((100, 100), np.uint16)
    values[0, :3] = 500  # 0.03 % of pixels: every percentile window collapses
    pixels, info = normalise_intensity(values, low_percentile=0.5, high_percentile=99.5, invert=False)
    assert info["voi"] == "minmax_fallback" and pixels.max() == 1.0 and pixels.min() == 0.0


def test_non_finite_values_are_quarantined() -> None:
    values = np.ones((8, 8), np.float32)
    values[0, 0] = np.nan
    with pytest.raises(QuarantineError) as err:
        normalise_intensity(values, low_percentile=1, high_percentile=99, invert=False)
    assert err.value.reason is Reason.DECODE_ERROR


def test_decode_file_reads_pyarrow_uris(tmp_path: Path) -> None:
    path, _ = badfiles.make_good_16bit(tmp_path)
    a = decode_file(f"file://{path}", **KW)
    np.testing.assert_array_equal(a.pixels, decode_file(str(path), **KW).pixels)


def test_no_preamble_dicom_decodes_like_the_normal_file(tmp_path: Path) -> None:
    raw = decode_file(str(badfiles.make_no_preamble(tmp_path)[0]), **KW)
    ds = badfiles.radiograph_dataset(badfiles.chest_like())
    np.testing.assert_array_equal(raw.pixels, decode_bytes(_dicom_bytes(ds), "a.dcm", **KW).pixels)


# -- resize ---------------------------------------------------------------------------------------
def test_resize_uint8_is_antialiased_and_keeps_boxes_aligned() -> None:
    checker = (np.indices((300, 200)).sum(axis=0) % 2).astype(np.float32)  # 1-px checkerboard
    small = resize_uint8(checker, 64)
    assert small.shape == (64, 64) and small.dtype == np.uint8
    assert abs(float(small.mean()) - 127.5) < 3 and small.std() < 12  # averaged, not aliased

    image = np.zeros((300, 200), np.float32)
    box = np.array([[40.0, 90.0, 120.0, 210.0]])  # xyxy, original pixels
    image[90:210, 40:120] = 1.0
    out = resize_uint8(image, 100)
    ys, xs = np.nonzero(out > 127)
    expected = scale_boxes(box, (300, 200), (100, 100))[0]
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], expected, atol=1)


def test_resize_uint8_upscales_and_clips() -> None:
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    out = resize_uint8(image, 32)
    assert out.shape == (32, 32) and out.min() == 0 and out.max() == 255
    assert np.array_equal(resize_uint8(np.ones((8, 8), np.float32), 8), np.full((8, 8), 255, np.uint8))


@pytest.mark.parametrize(
    "transfer_syntax",
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5",
     "1.2.840.10008.1.2.4.90"],
    ids=["implicit", "big_endian", "deflated", "rle", "j2k_lossless"],
)
def test_encodings_decode_identically_to_explicit_little_endian(transfer_syntax: str) -> None:
    from pydicom.uid import UID

    stored = badfiles.chest_like()
    ref = decode_bytes(_dicom_bytes(badfiles.radiograph_dataset(stored, bits_stored=12)), "a.dcm", **KW)
    ds = badfiles.radiograph_dataset(stored, bits_stored=12)
    ts = UID(transfer_syntax)
    buf = io.BytesIO()
    if ts.is_compressed:
        ds.compress(ts)  # pydicom's RLE encoder / pylibjpeg-openjpeg's J2K encoder
        ds.save_as(buf, enforce_file_format=True)
    else:
        if not ts.is_little_endian:
            ds.PixelData = stored.astype(">u2").tobytes()  # big-endian OW words
            ds["PixelData"].VR = "OW"
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(
            buf, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian, enforce_file_format=True
        )
    out = decode_bytes(buf.getvalue(), "b.dcm", **KW)
    assert out.info["transfer_syntax"] == transfer_syntax
    np.testing.assert_array_equal(out.pixels, ref.pixels)
