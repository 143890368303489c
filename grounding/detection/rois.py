"""ROIs of the frozen detector (design.md 1.3) and the ROI cache format.

For each image, from one detector pass (:func:`detector_forward`): N positive ROIs, chosen by
``detector.roi_pool`` among the anchors after box decoding and **before** NMS, and the N
lowest-scored anchors (negative ROIs I_n, whatever the pool), each with

* ``r_i`` feature, by ``detector.roi_features``:

  - ``tower`` (default): the classification subnet's last tower conv map
    (``head.classification_head.conv``, captured by a forward hook) at the anchor's (level, y, x).
    This is literally "the detector's last convolution map at that anchor": the map ``cls_logits``
    reads, so the feature is what decided the score and costs nothing extra. The A=9 anchors of one
    location share it; their geometry g_i tells them apart.
  - ``roi_align``: the box's content, ``MultiScaleRoIAlign`` of FPN P3-P5 over the decoded box
    (2x2 bins, sampling ratio 2; the level by box size, FPN paper eq. 1), flattened to 4 C.

* ``s_i`` score: sigmoid of the pneumonia logit.
* ``g_i`` geometry: the decoded box xyxy, clipped to the image, normalised to [0, 1].

Pools (``detector.roi_pool``): ``top_anchors`` (default) takes the N top-scored anchors;
``per_location`` keeps the best anchor of each (level, y, x) and takes the N top-scored of those
locations, so no two ROIs share a location.

Plus the detector's own post-NMS boxes (the supervised baseline), in original pixels when the
original sizes are given; at least the top one per image even below ``score_thresh``, so the
baseline's top-1 box is always defined. Anchor index -> (level, location): anchors are concatenated level by
level (P3..P7); inside a level index j = (y * W + x) * A + a (torchvision's head reshape), so the
global anchor j sits at global location j // A.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch
from torchvision.ops import MultiScaleRoIAlign

from grounding.data import storage
from grounding.data.boxes import flatten, scale_boxes
from grounding.config import RoiFeatures, RoiPool
from grounding.data.prepared import PREPARED_SCHEMA, bytes_to_pixels
from grounding.data.schema import ROI_EXTRA
from grounding.detection.detector import FrozenDetector, keep_top, to_three_channels

log = logging.getLogger(__name__)

ROI_ALIGN_LEVELS = 3  # P3-P5, the first three FPN outputs (P6/P7 are coarser than any lesion box)
ROI_ALIGN_OUTPUT = 2  # 2x2 bins per ROI: 4 C features
ROI_ALIGN_SAMPLING = 2  # bilinear samples per bin and axis


@dataclass
class DetectorForward:
    """One frozen-detector pass over B images; T anchors = L locations x A anchors per location.

    Attributes:
        fpn: FPN maps by name in level order (P3..P7), each (B, C, H_l, W_l).
        towers: the classification tower's last conv map per level, each (B, C, H_l, W_l).
        head: raw head outputs, ``cls_logits`` (B, T, 1) and ``bbox_regression`` (B, T, 4).
        anchors: per image (T, 4) xyxy in transformed-image pixels.
        scores: (B, T) sigmoid of the pneumonia logit.
        boxes_px: (B, T, 4) decoded xyxy clipped to the transformed image, in its pixels.
        boxes: (B, T, 4) ``boxes_px`` normalised to [0, 1] (g_i).
        image_sizes: (height, width) per transformed image: the frame of ``boxes_px``.
        input_size: S, the side of the (B, 1, S, S) input.
        num_anchors: A.
    """

    fpn: OrderedDict[str, torch.Tensor]
    towers: list[torch.Tensor]
    head: dict[str, torch.Tensor]
    anchors: list[torch.Tensor]
    scores: torch.Tensor
    boxes_px: torch.Tensor
    boxes: torch.Tensor
    image_sizes: list[tuple[int, int]]
    input_size: int
    num_anchors: int


@dataclass
class RoiBatch:
    """ROIs for a batch of B images; N ROIs each, C = feature_dim (:func:`roi_feature_dim`).

    Attributes:
        features: (B, N, C) float32, the positive ROIs (``roi_pool``), descending score.
        scores: (B, N) float32 in [0, 1].
        boxes: (B, N, 4) float32 xyxy normalised to [0, 1].
        neg_features, neg_scores, neg_boxes: the N lowest-scored anchors, ascending score.
        anchor_index: (B, N) int64 index of each positive ROI in the concatenated anchors.
        detections: per image dict ``boxes`` (K, 4) xyxy (original px if sizes were given, else
            prepared px) and ``scores`` (K,), descending; empty from :func:`select_rois` alone.
    """

    features: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    neg_features: torch.Tensor
    neg_scores: torch.Tensor
    neg_boxes: torch.Tensor
    anchor_index: torch.Tensor
    detections: list[dict[str, torch.Tensor]] = field(default_factory=list)


def anchor_locations(level_shapes: list[tuple[int, int]], num_anchors: int) -> tuple[torch.Tensor, ...]:
    """Per concatenated anchor index: (level, y, x, global location index).

    Args:
        level_shapes: (H_l, W_l) of each FPN level, in order.
        num_anchors: A, anchors per location.

    Returns:
        Four (sum_l H_l W_l A,) int64 tensors.
    """
    levels, ys, xs, locs = [], [], [], []
    loc_start = 0
    for level, (h, w) in enumerate(level_shapes):
        j = torch.arange(h * w * num_anchors)
        loc = j // num_anchors
        levels.append(torch.full_like(j, level))
        ys.append(loc // w)
        xs.append(loc % w)
        locs.append(loc + loc_start)
        loc_start += h * w
    return torch.cat(levels), torch.cat(ys), torch.cat(xs), torch.cat(locs)


def roi_feature_dim(fpn_channels: int, features: RoiFeatures | str = RoiFeatures.TOWER) -> int:
    """Width C of r_i for a detector with ``fpn_channels`` FPN/head channels."""
    bins = ROI_ALIGN_OUTPUT ** 2 if RoiFeatures(features) is RoiFeatures.ROI_ALIGN else 1
    return int(fpn_channels) * bins


# -- one detector pass ------------------------------------------------------------------------
def detector_forward(detector: FrozenDetector, images: torch.Tensor) -> DetectorForward:
    """Run the frozen detector once: FPN maps, tower maps, head outputs, anchors, decoded boxes.

    Args:
        detector: the frozen RetinaNet.
        images: (B, 1, S, S) float in [0, 1] (S = the detector's image size).
    """
    model = detector.model
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, S, S), got {tuple(images.shape)}")
    towers: list[torch.Tensor] = []
    hook = model.head.classification_head.conv.register_forward_hook(lambda m, i, o: towers.append(o))
    try:
        with torch.no_grad():
            il, _ = model.transform(to_three_channels(images))
            fpn = model.backbone(il.tensors)
            feats = list(fpn.values())
            head = model.head(feats)
            anchors = model.anchor_generator(il, feats)
            boxes_px, boxes = _decode(model, head, anchors, il.image_sizes)
    finally:
        hook.remove()
    total = head["cls_logits"].shape[1]
    a = total // sum(f.shape[2] * f.shape[3] for f in feats)
    return DetectorForward(OrderedDict(fpn), towers, head, anchors, head["cls_logits"][..., 0].sigmoid(),
                           boxes_px, boxes, [tuple(s) for s in il.image_sizes], images.shape[-1], a)


def _decode(model, head: dict, anchors: list[torch.Tensor], image_sizes) -> tuple[torch.Tensor, torch.Tensor]:
    """Every anchor's decoded box: (B, T, 4) clipped px of the transformed image, and normalised."""
    b, total = head["cls_logits"].shape[:2]
    decoded = model.box_coder.decode_single(
        head["bbox_regression"].reshape(-1, 4), torch.stack(anchors).reshape(-1, 4)
    ).reshape(b, total, 4)
    hw = torch.tensor([[s[1], s[0], s[1], s[0]] for s in image_sizes], dtype=decoded.dtype,
                      device=decoded.device)[:, None, :]  # (B, 1, 4) w, h, w, h of the transformed image
    px = torch.minimum(decoded.clamp(min=0), hw)
    return px, px / hw


# -- which anchors ----------------------------------------------------------------------------
def top_anchor_indices(scores: torch.Tensor, num_rois: int) -> torch.Tensor:
    """(B, T) scores -> (B, N) indices of the N top-scored anchors, descending."""
    return scores.topk(num_rois, dim=1, largest=True, sorted=True).indices


def per_location_indices(scores: torch.Tensor, num_anchors: int, num_rois: int) -> torch.Tensor:
    """The best anchor of each location, then the N top-scored locations.

    Args:
        scores: (B, T) in anchor order, T = L * A (anchor j sits at location j // A).
        num_anchors: A.
        num_rois: N <= L.

    Returns:
        (B, N) anchor indices at N distinct locations, descending score.
    """
    b, total = scores.shape
    locations = total // num_anchors
    if num_rois > locations:
        raise ValueError(f"num_rois={num_rois} exceeds the {locations} anchor locations "
                         "(roi_pool=per_location)")
    best, which = scores.reshape(b, locations, num_anchors).max(dim=2)  # (B, L)
    loc = best.topk(num_rois, dim=1, largest=True, sorted=True).indices
    return loc * num_anchors + torch.gather(which, 1, loc)


# -- what r_i is ------------------------------------------------------------------------------
def tower_features(forward: DetectorForward, index: torch.Tensor) -> torch.Tensor:
    """(B, N) anchor indices -> (B, N, C) tower vectors at the anchors' locations."""
    loc_feats = torch.cat([t.flatten(2).transpose(1, 2) for t in forward.towers], dim=1)  # (B, L, C)
    loc = index // forward.num_anchors
    return torch.gather(loc_feats, 1, loc[..., None].expand(-1, -1, loc_feats.shape[2]))


def pool_box_features(
    maps: Mapping[str, torch.Tensor],
    boxes: torch.Tensor,
    image_sizes: Sequence[tuple[int, int]],
    output_size: int = ROI_ALIGN_OUTPUT,
    sampling_ratio: int = ROI_ALIGN_SAMPLING,
) -> torch.Tensor:
    """RoIAlign of each box on the FPN level its size selects (MultiScaleRoIAlign), flattened.

    Args:
        maps: the levels to pool from, name -> (B, C, H_l, W_l), finest first; each level's scale
            is inferred from its size against ``image_sizes``.
        boxes: (B, N, 4) xyxy in pixels of the image frame of ``image_sizes``.
        image_sizes: (height, width) per image.

    Returns:
        (B, N, C * output_size**2), each ROI's (C, s, s) bins flattened channel-major.
    """
    # a fresh pooler per call: MultiScaleRoIAlign caches the scales of the first image size it sees
    pooler = MultiScaleRoIAlign(list(maps), output_size, sampling_ratio)
    b, n = boxes.shape[:2]
    first = next(iter(maps.values()))
    pooled = pooler(dict(maps), list(boxes.to(first.dtype).unbind(0)), [tuple(s) for s in image_sizes])
    return pooled.reshape(b, n, -1)


def _features(forward: DetectorForward, index: torch.Tensor, kind: RoiFeatures) -> torch.Tensor:
    """(B, N) anchor indices -> (B, N, C') r_i of the given kind."""
    if kind is RoiFeatures.TOWER:
        return tower_features(forward, index)
    maps = OrderedDict(list(forward.fpn.items())[:ROI_ALIGN_LEVELS])
    boxes = torch.gather(forward.boxes_px, 1, index[..., None].expand(-1, -1, 4))
    return pool_box_features(maps, boxes, forward.image_sizes)


# -- ROIs and detections ----------------------------------------------------------------------
@torch.no_grad()
def select_rois(
    forward: DetectorForward,
    num_rois: int,
    pool: RoiPool | str = RoiPool.TOP_ANCHORS,
    features: RoiFeatures | str = RoiFeatures.TOWER,
) -> RoiBatch:
    """Positive ROIs by ``pool`` and the N lowest-scored anchors, with ``features`` as r_i.

    Returns:
        A ``RoiBatch`` without detections (see :func:`forward_detections`).
    """
    pool, kind = RoiPool(pool), RoiFeatures(features)
    scores = forward.scores
    total = scores.shape[1]
    if num_rois > total:
        raise ValueError(f"num_rois={num_rois} exceeds the {total} anchors of a "
                         f"{forward.input_size} px image")
    if pool is RoiPool.TOP_ANCHORS:
        top = top_anchor_indices(scores, num_rois)
    else:
        top = per_location_indices(scores, forward.num_anchors, num_rois)
    low = scores.topk(num_rois, dim=1, largest=False, sorted=True).indices

    def gather(idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        boxes = torch.gather(forward.boxes, 1, idx[..., None].expand(-1, -1, 4))
        return _features(forward, idx, kind).float(), torch.gather(scores, 1, idx).float(), boxes.float()

    pf, ps, pb = gather(top)
    nf, ns, nb = gather(low)
    return RoiBatch(pf, ps, pb, nf, ns, nb, top)


@torch.no_grad()
def forward_detections(
    detector: FrozenDetector, forward: DetectorForward, original_sizes: list[tuple[int, int]] | None = None
) -> list[dict[str, torch.Tensor]]:
    """The detector's post-NMS boxes (the supervised baseline), at least the top one per image.

    Returns:
        Per image ``boxes`` (K, 4) xyxy float32 (original px if ``original_sizes``, else input px)
        and ``scores`` (K,), descending.
    """
    model = detector.model
    shapes = [(t.shape[2], t.shape[3]) for t in forward.towers]
    per_level = [h * w * forward.num_anchors for h, w in shapes]
    split_head = {k: list(v.split(per_level, dim=1)) for k, v in forward.head.items()}
    split_anchors = [list(x.split(per_level)) for x in forward.anchors]
    # threshold 0 then keep_top: the baseline always has a top-1 box (see detect_keep_top)
    thresh = model.score_thresh
    model.score_thresh = 0.0
    try:
        dets = model.postprocess_detections(split_head, split_anchors, forward.image_sizes)
    finally:
        model.score_thresh = thresh
    dets = [keep_top(d, thresh) for d in dets]
    s = forward.input_size
    dets = model.transform.postprocess(dets, forward.image_sizes, [(s, s)] * len(dets))
    out = []
    for i, d in enumerate(dets):
        boxes = d["boxes"].float()
        if original_sizes is not None:
            boxes = torch.as_tensor(
                scale_boxes(boxes.cpu().numpy(), (s, s), tuple(original_sizes[i])), dtype=torch.float32
            )
        out.append({"boxes": boxes, "scores": d["scores"].float()})
    return out


def extract_rois(
    detector: FrozenDetector,
    images: torch.Tensor,
    num_rois: int,
    original_sizes: list[tuple[int, int]] | None = None,
    pool: RoiPool | str = RoiPool.TOP_ANCHORS,
    features: RoiFeatures | str = RoiFeatures.TOWER,
) -> RoiBatch:
    """Run the frozen detector once on a batch and return its ROIs and detections.

    Args:
        detector: the frozen RetinaNet.
        images: (B, 1, S, S) float in [0, 1] (S = the detector's image size).
        num_rois: N; must not exceed the number of anchors (of locations for ``per_location``).
        original_sizes: optional (height, width) per image; detections are then in original pixels.
        pool: ``detector.roi_pool``, which anchors are the positive ROIs.
        features: ``detector.roi_features``, what r_i is.

    Returns:
        A ``RoiBatch`` (tensors on the images' device).
    """
    forward = detector_forward(detector, images)
    rois = select_rois(forward, num_rois, pool, features)
    rois.detections = forward_detections(detector, forward, original_sizes)
    return rois


# -- ROI cache rows ---------------------------------------------------------------------------
def roi_columns(rois: RoiBatch) -> list[dict]:
    """One dict of ``grounding.data.schema.ROI_EXTRA`` values per image of the batch."""
    rows = []
    n, c = rois.features.shape[1], rois.features.shape[2]
    feats = rois.features.cpu().numpy().astype(np.float16)
    neg_feats = rois.neg_features.cpu().numpy().astype(np.float16)
    for i in range(rois.features.shape[0]):
        det = rois.detections[i]
        rows.append({
            "roi_features": feats[i].tobytes(),
            "roi_scores": rois.scores[i].cpu().numpy().astype(np.float32).tolist(),
            "roi_boxes": rois.boxes[i].cpu().numpy().astype(np.float32).reshape(-1).tolist(),
            "neg_roi_features": neg_feats[i].tobytes(),
            "neg_roi_scores": rois.neg_scores[i].cpu().numpy().astype(np.float32).tolist(),
            "neg_roi_boxes": rois.neg_boxes[i].cpu().numpy().astype(np.float32).reshape(-1).tolist(),
            "num_rois": int(n),
            "feature_dim": int(c),
            "detector_boxes": flatten(det["boxes"].cpu().numpy()),
            "detector_scores": det["scores"].cpu().numpy().astype(np.float32).tolist(),
        })
    return rows


def roi_arrays(row: dict) -> dict[str, np.ndarray]:
    """Decode one ROI cache row into arrays.

    Returns:
        ``features`` (N, C) float32, ``scores`` (N,), ``boxes`` (N, 4) normalised xyxy,
        ``neg_features``, ``neg_scores``, ``neg_boxes`` likewise, ``detector_boxes`` (K, 4) xyxy in
        original pixels, ``detector_scores`` (K,).
    """
    n, c = int(row["num_rois"]), int(row["feature_dim"])

    def feats(key: str) -> np.ndarray:
        data = row[key]
        if len(data) != n * c * 2:
            raise ValueError(f"image {row.get('image_id', '?')}: {key} holds {len(data)} bytes, expected {n}x{c} fp16")
        return np.frombuffer(data, dtype=np.float16).reshape(n, c).astype(np.float32)

    return {
        "features": feats("roi_features"),
        "scores": np.asarray(row["roi_scores"], dtype=np.float32),
        "boxes": np.asarray(row["roi_boxes"], dtype=np.float32).reshape(n, 4),
        "neg_features": feats("neg_roi_features"),
        "neg_scores": np.asarray(row["neg_roi_scores"], dtype=np.float32),
        "neg_boxes": np.asarray(row["neg_roi_boxes"], dtype=np.float32).reshape(n, 4),
        "detector_boxes": np.asarray(row["detector_boxes"] or [], dtype=np.float64).reshape(-1, 4),
        "detector_scores": np.asarray(row["detector_scores"] or [], dtype=np.float32),
    }


def read_roi_cache(path: str, columns: list[str] | None = None) -> pa.Table:
    """Read an ROI cache folder (all ``*.parquet`` shards), one row per image, sorted by image_id.

    Duplicate image ids (a retried shard written twice) are dropped, keeping the first.
    """
    table = storage.read_table(path, columns=columns)
    if "image_id" not in table.column_names:
        return table
    table = table.sort_by("image_id")
    ids = table.column("image_id").to_numpy(zero_copy_only=False)
    if len(ids) > 1:
        keep = np.concatenate([[True], ids[1:] != ids[:-1]])
        if not keep.all():
            table = table.filter(pa.array(keep))
    return table


# The ROI cache's rows: the prepared columns (no pixels) plus the ROI columns.
ROI_SCHEMA = pa.schema(
    [f for f in PREPARED_SCHEMA if f.name not in ("pixels", "boxes_prepared")]
    + [pa.field(n, t) for n, t in ROI_EXTRA]
)
ROI_PASS_COLUMNS = [f.name for f in ROI_SCHEMA if f.name not in dict(ROI_EXTRA)]


def rois_for_rows(detector: FrozenDetector, rows: list[dict], num_rois: int,
                  device: torch.device | str = "cpu", pool: RoiPool | str = RoiPool.TOP_ANCHORS,
                  features: RoiFeatures | str = RoiFeatures.TOWER) -> pa.Table:
    """Prepared row dicts -> a ``ROI_SCHEMA`` table (one detector pass for the whole batch).

    ``pool`` and ``features`` are ``detector.roi_pool`` and ``detector.roi_features``.
    """
    s = detector.image_size
    images, kept, sizes = [], [], []
    for row in rows:
        try:
            img = torch.from_numpy(bytes_to_pixels(row["pixels"], int(row["image_size"])).copy())
        except (ValueError, TypeError) as err:
            log.error("image %s: unreadable prepared pixels (%s); skipped", row.get("image_id"), err)
            continue
        img = img.float().div_(255.0)[None, None]
        if img.shape[-1] != s:  # prepared at another size: resize to the detector's input
            img = torch.nn.functional.interpolate(img, size=(s, s), mode="bilinear", align_corners=False)
        images.append(img[0])
        kept.append(row)
        h, w = int(row.get("height") or 0), int(row.get("width") or 0)
        sizes.append((h, w) if h > 0 and w > 0 else (int(row["image_size"]),) * 2)
    if not kept:
        return ROI_SCHEMA.empty_table()
    rois = extract_rois(detector, torch.stack(images).to(device), num_rois, sizes,
                        pool=pool, features=features)
    out = [{**{c: row.get(c) for c in ROI_PASS_COLUMNS}, **extra} for row, extra in zip(kept, roi_columns(rois))]
    return pa.Table.from_pylist(out, schema=ROI_SCHEMA)
