"""Inference from the image alone (design.md 1.5): image files -> boxes + 22 attribute probabilities.

Pipeline per image, the same as training saw it:

1. ``grounding.data.imaging.decode_file`` (DICOM / PNG / JPEG -> float (H, W) in [0, 1], fixed percentile
   window of the checkpoint's ``data`` section); a file that cannot be used becomes an error entry
   (reason code + our own PHI-free message), never an exception.
2. ``resize_uint8`` to ``data.image_size`` of the checkpoint (the prepared-image size), then, as
   extract-rois does, bilinear resize to the detector's input if that differs.
3. Frozen RetinaNet ``extract_rois`` (the checkpoint's ``detector.num_rois``, ``roi_pool`` and
   ``roi_features``: the ROIs the model was trained on).
4. Grounding model -> alpha; :func:`grounding.model.grounding_model.localize` ranks ROIs by alpha, runs NMS and keeps
   ``top_k``; boxes go from normalised [0, 1] to ORIGINAL pixels (xyxy) with the image's own size.

Result objects hold only the name the caller gave (the path), the image size, numbers, and the
attribute names: no DICOM header value can reach them.

The detector: an explicit path, else the reference the model checkpoint carries (its config's
``detector.weights_path`` + ``weights_sha256``, or ``extra["detector_weights"]``); without any,
:class:`PredictError` asks for ``--detector``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import PurePosixPath
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from grounding.data import storage
from grounding.model.checkpoint import load_model
from grounding.config import RoiFeatures
from grounding.detection.detector import load_frozen_detector
from grounding.data.imaging import QuarantineError, decode_file, resize_uint8, to_uint8
from grounding.model.grounding_model import localize
from grounding.detection.rois import extract_rois, roi_feature_dim
from grounding.text.vocabulary import ATTRIBUTES

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 3
DEFAULT_NMS_IOU = 0.5  # ROIs overlapping a higher-alpha ROI by more than this are duplicates
PREDICTIONS_FILE = "predictions.json"


class PredictError(ValueError):
    """The model or detector cannot be set up for prediction (the message says what to pass)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def detector_reference(cfg: Any, payload: dict, detector_path: str = "") -> tuple[str, str]:
    """(weights path, sha256 or "" = use the sidecar) of the detector to pair with a model.

    Order: ``detector_path`` (sha256 from the model config if it names the same file, else the
    ``detector.pt.sha256`` sidecar), the model config's ``detector.weights_path``, then
    ``payload["extra"]["detector_weights"]``.

    Raises:
        PredictError: no detector given and the checkpoint carries no reference.
    """
    d = cfg.detector
    if detector_path:
        return detector_path, d.weights_sha256 if d.weights_path == detector_path else ""
    if d.weights_path:
        return d.weights_path, d.weights_sha256
    extra = payload.get("extra") or {}
    if extra.get("detector_weights"):
        return str(extra["detector_weights"]), str(extra.get("detector_sha256", ""))
    raise PredictError("the model checkpoint carries no detector reference (detector.weights_path is empty): "
                       "pass the frozen detector it was trained with, --detector path/to/detector.pt")


def _model_feature_dim(model: torch.nn.Module) -> int:
    w1 = model.embed.w1
    return int((w1[0] if isinstance(w1, torch.nn.Sequential) else w1).in_features)


def _error_entry(name: str, reason: str, message: str) -> dict:
    return {"file": name, "error": {"reason": reason, "message": message}}


class Predictor:
    """Frozen detector + grounding model, ready for images.

    Args:
        model_path: exported ``model.pt`` (or a checkpoint folder), sha256-verified, weights-only.
        detector_path: exported ``detector.pt`` (``detector.json`` + sidecar beside it); "" = the
            reference in the model checkpoint.
        device: "cpu", "cuda", "cuda:1" or "auto".
        top_k: boxes kept per image after NMS.
        nms_iou: NMS IoU threshold on the alpha-ranked ROIs.
        batch_size: images per detector/model pass.
    """

    def __init__(self, model_path: str, detector_path: str = "", device: str | torch.device = "cpu",
                 top_k: int = DEFAULT_TOP_K, nms_iou: float = DEFAULT_NMS_IOU, batch_size: int = 8) -> None:
        if top_k < 1:
            raise PredictError(f"top_k must be >= 1, got {top_k}")
        self.device = resolve_device(device)
        self.model, self.cfg, payload = load_model(model_path, map_location="cpu")
        self.model.to(self.device).eval()
        path, sha = detector_reference(self.cfg, payload, detector_path)
        self.detector = load_frozen_detector(path, sha).to(self.device)
        d = self.cfg.detector
        self.num_rois, self.roi_pool, self.roi_features = int(d.num_rois), d.roi_pool, d.roi_features
        width = roi_feature_dim(self.detector.feature_dim, self.roi_features)
        if width != _model_feature_dim(self.model):
            raise PredictError(f"{path}: detector ROI features ({RoiFeatures(self.roi_features).value}) are "
                               f"{width}-d but the model expects {_model_feature_dim(self.model)}-d: not the "
                               "detector it trained on")
        self.image_size = int(self.cfg.data.image_size)
        self.top_k, self.nms_iou, self.batch_size = int(top_k), float(nms_iou), max(1, int(batch_size))

    # -- preprocessing ------------------------------------------------------------------------
    def decode(self, path: str):
        """``decode_file`` with the checkpoint's intensity policy (raises ``QuarantineError``)."""
        d = self.cfg.data
        return decode_file(path, max_pixels=d.max_pixels, low_percentile=d.low_percentile,
                           high_percentile=d.high_percentile)

    def _detector_input(self, prepared: Sequence[np.ndarray]) -> torch.Tensor:
        """N (S, S) uint8 -> (N, 1, S_det, S_det) float in [0, 1], as extract-rois feeds the detector."""
        x = torch.from_numpy(np.stack(prepared)).float().div_(255.0)[:, None]
        s = self.detector.image_size
        if x.shape[-1] != s:
            x = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x.to(self.device)

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def _predict_prepared(self, prepared: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[dict]:
        """Prepared (S, S) uint8 images + original (height, width) -> result dicts (no ``file``)."""
        rois = extract_rois(self.detector, self._detector_input(prepared), self.num_rois, sizes,
                            pool=self.roi_pool, features=self.roi_features)
        mask = torch.ones(rois.scores.shape, dtype=torch.bool, device=rois.scores.device)
        out = self.model(rois.features, rois.boxes, rois.scores, mask)
        loc = localize(out, rois.boxes, iou_threshold=self.nms_iou, top_k=self.top_k, roi_mask=mask)
        probs = out.probabilities.float().cpu().numpy()
        results = []
        for i, (h, w) in enumerate(sizes):
            boxes = loc.boxes[i].astype(np.float64) * np.array([w, h, w, h], dtype=np.float64)
            det = rois.detections[i]
            results.append({
                "width": int(w), "height": int(h),
                "boxes": [[round(float(v), 2) for v in b] for b in boxes],
                "scores": [round(float(s), 6) for s in loc.scores[i]],
                "attributes": {a: round(float(p), 6) for a, p in zip(ATTRIBUTES, probs[i])},
                "detector_boxes": [[round(float(v), 2) for v in b]
                                   for b in det["boxes"][: self.top_k].tolist()],
                "detector_scores": [round(float(s), 6) for s in det["scores"][: self.top_k].tolist()],
                "error": None,
            })
        return results

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(H, W) float [0, 1] or uint8 -> ((S, S) uint8 prepared, (H, W))."""
        a = np.asarray(image)
        if a.ndim != 2:
            raise ValueError(f"images must be 2-D (H, W), got shape {a.shape}")
        f = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        return resize_uint8(f, self.image_size), (int(a.shape[0]), int(a.shape[1]))

    def predict_arrays(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[dict]:
        """Already-normalised images -> one result dict each.

        Args:
            images: N (H, W) arrays, float in [0, 1] (air dark, as ``decode_file`` gives) or uint8.
            names: optional N labels for the ``file`` field (default ``image_<i>``).

        Returns:
            N dicts: ``file``, ``width``, ``height``, ``boxes`` (<= top_k, 4) xyxy ORIGINAL pixels,
            ``scores`` (alpha of each kept ROI), ``attributes`` {name: probability} (22),
            ``detector_boxes``/``detector_scores`` (the supervised baseline), ``error`` None.
        """
        names = list(names) if names is not None else [f"image_{i}" for i in range(len(images))]
        if len(names) != len(images):
            raise ValueError(f"{len(names)} names for {len(images)} images")
        out: list[dict] = []
        for start in range(0, len(images), self.batch_size):
            prepared, sizes = zip(*(self._prepare(img) for img in images[start:start + self.batch_size]))
            for name, res in zip(names[start:start + self.batch_size],
                                 self._predict_prepared(list(prepared), list(sizes))):
                out.append({"file": str(name), **res})
        return out

    def predict_files(self, paths: Sequence[str], keep_pixels: bool = False) -> list[dict]:
        """Decode and predict each file; a file that cannot be used gives an error entry.

        Only the prepared (S, S) copy of each image is kept between decoding and the model, so a
        batch of 4000-px radiographs does not hold several float copies in memory.

        Args:
            paths: local paths or pyarrow URIs of DICOM / PNG / JPEG files.
            keep_pixels: also return each decoded image as ``_pixels`` (uint8, original size), for overlays.

        Returns:
            One dict per path, in order (see :meth:`predict_arrays`); failures are
            ``{"file", "error": {"reason", "message"}}``.
        """
        results: list[dict | None] = [None] * len(paths)
        for start in range(0, len(paths), self.batch_size):
            idx, prepared, sizes, views = [], [], [], []
            for i in range(start, min(start + self.batch_size, len(paths))):
                try:
                    pixels = self.decode(paths[i]).pixels
                    p, hw = self._prepare(pixels)
                except QuarantineError as err:
                    results[i] = _error_entry(str(paths[i]), err.reason.value, err.message)
                    continue
                except Exception as err:  # noqa: BLE001 - the text may quote header values: type only
                    results[i] = _error_entry(str(paths[i]), "decode_error",
                                              f"unexpected {type(err).__name__}")
                    continue
                idx.append(i)
                prepared.append(p)
                sizes.append(hw)
                views.append(to_uint8(pixels) if keep_pixels else None)
            if not idx:
                continue
            for i, view, res in zip(idx, views, self._predict_prepared(prepared, sizes)):
                results[i] = {"file": str(paths[i]), **res}
                if view is not None:
                    results[i]["_pixels"] = view
        return [r for r in results if r is not None]


# -- outputs ------------------------------------------------------------------------------------
def overlay_name(index: int, path: str) -> str:
    """``0003-<stem>.png``: the index keeps names unique, the stem is the caller's own file name."""
    stem = PurePosixPath(str(path).replace("\\", "/")).stem
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "image"
    return f"{index:04d}-{safe}.png"


def write_overlay(pixels: np.ndarray, result: dict, path: str, top_attributes: int = 3) -> str:
    """Predicted boxes (red, with alpha) on the normalised image; the top attributes as text below."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from grounding.evaluation.figures import PRED_COLOUR, save_figure

    h, w = pixels.shape
    fig, ax = plt.subplots(figsize=(5.0, 5.0 * h / w + 0.6))
    ax.imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for (x1, y1, x2, y2), score in zip(result["boxes"], result["scores"]):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=PRED_COLOUR, linewidth=1.8))
        ax.text(x1, y1, f"{score:.2f}", color=PRED_COLOUR, fontsize=8, va="bottom")
    top = sorted(result["attributes"].items(), key=lambda t: -t[1])[:top_attributes]
    ax.set_title(PurePosixPath(str(result["file"])).name, fontsize=9)
    ax.set_xlabel("  ".join(f"{a} {p:.2f}" for a, p in top), fontsize=9)
    return save_figure(fig, path)


def write_predictions(results: list[dict], out_dir: str, overlays: bool = True) -> dict[str, Any]:
    """``<out>/predictions.json`` (list of result objects) + one overlay PNG per predicted image."""
    import json

    storage.makedirs(out_dir)
    clean = []
    for i, r in enumerate(results):
        px = r.pop("_pixels", None)
        if overlays and px is not None and r.get("error") is None:
            r["overlay"] = overlay_name(i, r["file"])
            write_overlay(px, r, storage.join(out_dir, r["overlay"]))
        clean.append(r)
    path = storage.join(out_dir, PREDICTIONS_FILE)
    storage.atomic_write_text(path, json.dumps(clean, indent=2) + "\n")
    errors = Counter(r["error"]["reason"] for r in clean if r.get("error"))
    return {"predictions": path, "images": len(clean), "errors": dict(errors)}


# -- severity-cv --------------------------------------------------------------------------------
def predict_probabilities(manifest: pa.Table, checkpoint: str, cfg: Any = None, detector_path: str = "",
                          device: str = "auto", batch_size: int = 8) -> pa.Table:
    """P(severe) and P(mild) for every manifest image that decodes (for ``grounding severity-cv``).

    Args:
        manifest: a manifest table (``image_id``, ``image_uri``).
        checkpoint: exported grounding ``model.pt``.
        cfg: the job's config; its ``detector.weights_path``/``weights_sha256`` name the detector
            when ``detector_path`` is empty (then the checkpoint's own reference is used).
        detector_path: explicit ``detector.pt``.

    Returns:
        ``pa.Table[image_id, p_severe, p_mild]`` of the images that could be used; the others are
        logged (image id + reason code) and counted, never raised.
    """
    if cfg is not None and not detector_path and cfg.detector.weights_path:
        detector_path = cfg.detector.weights_path
    predictor = Predictor(checkpoint, detector_path, device=device, top_k=1, batch_size=batch_size)
    ids = manifest.column("image_id").to_pylist()
    uris = manifest.column("image_uri").to_pylist()
    j_severe, j_mild = ATTRIBUTES.index("severe"), ATTRIBUTES.index("mild")
    out_ids, p_severe, p_mild = [], [], []
    errors: Counter = Counter()
    for res, image_id in zip(predictor.predict_files(uris), ids):
        if res.get("error"):
            errors[res["error"]["reason"]] += 1
            log.warning("image %s: not predicted (%s: %s)", image_id, res["error"]["reason"],
                        res["error"]["message"])
            continue
        out_ids.append(image_id)
        p_severe.append(res["attributes"][ATTRIBUTES[j_severe]])
        p_mild.append(res["attributes"][ATTRIBUTES[j_mild]])
    log.info("predict_probabilities: %d of %d images predicted, %d errors %s", len(out_ids), len(ids),
             sum(errors.values()), dict(errors))
    return pa.table({"image_id": pa.array(out_ids, pa.string()), "p_severe": pa.array(p_severe, pa.float64()),
                     "p_mild": pa.array(p_mild, pa.float64())})


__all__ = ["DEFAULT_NMS_IOU", "DEFAULT_TOP_K", "PREDICTIONS_FILE", "PredictError", "Predictor",
           "detector_reference", "overlay_name", "predict_probabilities", "write_overlay",
           "write_predictions"]
