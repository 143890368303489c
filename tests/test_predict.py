"""predict: boxes in original pixels, 22 probabilities, error entries, no PHI; severity-cv wiring."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from grounding.detection import detector as det
from grounding.bench.train import synthetic_vectors
from grounding.model.checkpoint import export_model
from grounding.config import GroundingConfig
from grounding.model.grounding_model import build_model
from grounding.model.predict import PredictError, Predictor, predict_probabilities
from grounding.synth.dicom_writer import write_canary_dicom
from grounding.text.vocabulary import ATTRIBUTES, VOCABULARY_VERSION

DET_SIZE = 64
PREP_SIZE = 80  # prepared size differs from the detector input: exercises the resize path
PHI = {"PatientName": "CANARY^SECRETNAME", "PatientID": "PIDCANARY991", "InstitutionName": "CanaryGeneralHosp",
       "StudyDate": "19991231", "AccessionNumber": "ACCCANARY77"}


def _export(tmp, with_reference: bool = True) -> tuple[str, str]:
    torch.manual_seed(0)
    detector = det.build_retinanet("resnet18", 16, DET_SIZE, score_thresh=0.0, detections_per_img=5)
    det_dir = tmp / "detector"
    meta = det.detector_meta("resnet18", 16, DET_SIZE, GroundingConfig().to_dict()["detector"])
    digest = det.export_detector(detector, str(det_dir), meta)
    det_path = str(det_dir / "detector.pt")
    over = {"data.image_size": PREP_SIZE, "detector.num_rois": 8, "detector.fpn_channels": 16,
            "model.roi_hidden": 8, "model.classifier_hidden": [8]}
    if with_reference:
        over.update({"detector.weights_path": det_path, "detector.weights_sha256": digest})
    cfg = GroundingConfig().with_overrides(over)
    v = synthetic_vectors(8)
    model = build_model(16, v.vectors, v.negative_vectors, cfg.model)
    out = tmp / ("model" if with_reference else "model_noref")
    export_model(out, model_state=model.state_dict(), config=cfg.to_dict(), config_yaml=cfg.to_yaml(),
                 vocabulary=ATTRIBUTES, vocabulary_version=VOCABULARY_VERSION, epoch=0)
    return str(out / "model.pt"), det_path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    model_path, det_path = _export(tmp)
    rng = np.random.default_rng(0)
    files = {}
    png = (rng.random((90, 120)) * 200 + 20).astype(np.uint8)  # H=90, W=120
    Image.fromarray(png).save(tmp / "a.png")
    files["png"] = str(tmp / "a.png")
    jpg = (rng.random((100, 70)) * 200 + 20).astype(np.uint8)  # H=100, W=70
    Image.fromarray(jpg).save(tmp / "b.jpg", quality=90)
    files["jpg"] = str(tmp / "b.jpg")
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    files["corrupt"] = str(tmp / "corrupt.png")
    write_canary_dicom(str(tmp / "canary.dcm"), PHI, size=96)
    files["dicom"] = str(tmp / "canary.dcm")
    return tmp, model_path, det_path, files


def _check_result(r, width, height, top_k):
    assert r["error"] is None and (r["width"], r["height"]) == (width, height)
    boxes = np.asarray(r["boxes"]).reshape(-1, 4)
    assert 1 <= len(boxes) <= top_k and len(r["scores"]) == len(boxes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width + 1e-6).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height + 1e-6).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert list(r["attributes"]) == list(ATTRIBUTES)
    p = np.array(list(r["attributes"].values()))
    assert len(p) == 22 and ((p >= 0) & (p <= 1)).all()
    assert r["scores"] == sorted(r["scores"], reverse=True)  # alpha ranking


def test_predict_files_boxes_probabilities_errors_and_no_phi(exported):
    tmp, model_path, _, files = exported
    predictor = Predictor(model_path, top_k=3, batch_size=2)  # the detector comes from the checkpoint's reference
    paths = [files["png"], files["corrupt"], files["jpg"], files["dicom"]]
    results = predictor.predict_files(paths)
    assert [r["file"] for r in results] == paths
    _check_result(results[0], 120, 90, 3)
    _check_result(results[2], 70, 100, 3)
    _check_result(results[3], 96, 96, 3)
    assert results[1]["error"]["reason"] == "bad_image" and "boxes" not in results[1]
    # boxes are in ORIGINAL pixels: the same image at twice the size gives twice the coordinates
    # (both reduce to the same prepared pixels: constant 2x1 and 4x2 blocks of one 80 x 80 image)
    base = np.random.default_rng(1).integers(20, 230, (PREP_SIZE, PREP_SIZE)).astype(np.uint8)
    small, big = np.repeat(base, 2, axis=1), np.repeat(np.repeat(base, 2, axis=0), 4, axis=1)
    small_r, big_r = predictor.predict_arrays([small, big])
    assert (small_r["width"], small_r["height"], big_r["width"], big_r["height"]) == (160, 80, 320, 160)
    np.testing.assert_allclose(np.asarray(big_r["boxes"]), 2 * np.asarray(small_r["boxes"]), atol=0.05)
    assert small_r["attributes"] == big_r["attributes"]

    from grounding.model.predict import write_predictions

    out = tmp / "out"
    summary = write_predictions(predictor.predict_files(paths, keep_pixels=True), str(out))
    assert summary["images"] == 4 and summary["errors"] == {"bad_image": 1}
    text = (out / "predictions.json").read_text()
    for value in PHI.values():
        assert value not in text and value.split("^")[0] not in text
    data = json.loads(text)
    assert len(data) == 4 and all("_pixels" not in r for r in data)
    overlays = [r["overlay"] for r in data if r.get("overlay")]
    assert len(overlays) == 3 and all((out / o).stat().st_size > 1000 for o in overlays)


def test_detector_reference_required(exported, tmp_path):
    _, _, det_path, files = exported
    model_path, _ = _export(tmp_path, with_reference=False)
    with pytest.raises(PredictError, match="--detector"):
        Predictor(model_path)
    r = Predictor(model_path, det_path, top_k=1).predict_files([files["png"]])[0]
    _check_result(r, 120, 90, 1)


def test_predict_cli(exported, tmp_path):
    from rayjobs.predict import main

    _, model_path, det_path, files = exported
    rc = main([files["png"], files["corrupt"], "--checkpoint", model_path, "--detector", det_path,
               "--out", str(tmp_path / "cli"), "--top-k", "2", "--no-overlays"])
    assert rc == 0
    data = json.loads((tmp_path / "cli" / "predictions.json").read_text())
    assert len(data) == 2 and len(data[0]["boxes"]) <= 2 and data[1]["error"]["reason"] == "bad_image"
    assert main([files["png"], "--checkpoint", str(tmp_path / "missing.pt")]) == 2


def test_predict_probabilities_counts_errors(exported):
    _, model_path, _, files = exported
    manifest = pa.table({"image_id": ["i1", "i2", "i3"], "image_uri": [files["png"], files["corrupt"], files["jpg"]]})
    table = predict_probabilities(manifest, model_path, GroundingConfig())
    assert table.column_names == ["image_id", "p_severe", "p_mild"]
    assert table.column("image_id").to_pylist() == ["i1", "i3"]
    p = np.array(table.column("p_severe").to_pylist() + table.column("p_mild").to_pylist())
    assert ((p >= 0) & (p <= 1)).all()
