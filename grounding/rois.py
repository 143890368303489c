"""ROIs of the frozen detector (design.md 1.3) and the ROI cache format.

For each image: the N top-scored anchors after box decoding and **before** NMS (positive ROIs)
and the N lowest-scored anchors (negative ROIs I_n), each with

* ``r_i`` feature: the classification subnet's last tower conv map (``head.classification_head.conv``,
  captured by a forward hook) at the anchor's (level, y, x). This is literally "the detector's last
  convolution map at that anchor": the map ``cls_logits`` reads, so the feature is what decided the
  score, costs nothing extra, and needs no RoIAlign. The A=9 anchors of one location share it; their
  geometry g_i tells them apart.
* ``s_i`` score: sigmoid of the pneumonia logit.
* ``g_i`` geometry: the decoded box xyxy, clipped to the image, normalised to [0, 1].

Plus the detector's own post-NMS boxes (the supervised baseline), in original pixels when the
original sizes are given; at least the top one per image even below ``score_thresh``, so the
baseline's top-1 box is always defined. Anchor index -> (level, location): anchors are concatenated level by
level (P3..P7); inside a level index j = (y * W + x) * A + a (torchvision's head reshape).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from grounding import storage
from grounding.boxes import flatten, scale_boxes
from grounding.detector import FrozenDetector, keep_top, to_three_channels


@dataclass
class RoiBatch:
    """ROIs for a batch of B images; N ROIs each, C = feature_dim.

    Attributes:
        features: (B, N, C) float32, top-N anchors, descending score.
        scores: (B, N) float32 in [0, 1].
        boxes: (B, N, 4) float32 xyxy normalised to [0, 1].
        neg_features, neg_scores, neg_boxes: the N lowest-scored anchors, ascending score.
        anchor_index: (B, N) int64 index of each positive ROI in the concatenated anchors.
        detections: per image dict ``boxes`` (K, 4) xyxy (original px if sizes were given, else
            prepared px) and ``scores`` (K,), descending.
    """

    features: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    neg_features: torch.Tensor
    neg_scores: torch.Tensor
    neg_boxes: torch.Tensor
    anchor_index: torch.Tensor
    detections: list[dict[str, torch.Tensor]]


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


def extract_rois(
    detector: FrozenDetector,
    images: torch.Tensor,
    num_rois: int,
    original_sizes: list[tuple[int, int]] | None = None,
) -> RoiBatch:
    """Run the frozen detector once on a batch and return its ROIs and detections.

    Args:
        detector: the frozen RetinaNet.
        images: (B, 1, S, S) float in [0, 1] (S = the detector's image size).
        num_rois: N; must not exceed the number of anchors.
        original_sizes: optional (height, width) per image; detections are then in original pixels.

    Returns:
        A ``RoiBatch`` (tensors on the images' device).
    """
    model = detector.model
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, S, S), got {tuple(images.shape)}")
    towers: list[torch.Tensor] = []
    hook = model.head.classification_head.conv.register_forward_hook(lambda m, i, o: towers.append(o))
    try:
        with torch.no_grad():
            il, _ = model.transform(to_three_channels(images))
            feats = list(model.backbone(il.tensors).values())
            head = model.head(feats)
            anchors = model.anchor_generator(il, feats)
    finally:
        hook.remove()
    b = images.shape[0]
    shapes = [(f.shape[2], f.shape[3]) for f in feats]
    total = head["cls_logits"].shape[1]
    a = total // sum(h * w for h, w in shapes)
    if num_rois > total:
        raise ValueError(f"num_rois={num_rois} exceeds the {total} anchors of a {images.shape[-1]} px image")
    with torch.no_grad():
        scores = head["cls_logits"][..., 0].sigmoid()  # (B, total)
        anchors_t = torch.stack(anchors)  # (B, total, 4)
        decoded = model.box_coder.decode_single(
            head["bbox_regression"].reshape(-1, 4), anchors_t.reshape(-1, 4)
        ).reshape(b, total, 4)
        hw = torch.tensor([[s[1], s[0], s[1], s[0]] for s in il.image_sizes], dtype=decoded.dtype,
                          device=decoded.device)  # (B, 4) w, h, w, h of the transformed image
        norm = torch.minimum(decoded.clamp(min=0), hw[:, None, :]) / hw[:, None, :]
        # (B, L, C): every location of every level, in anchor order, for one gather per ROI
        loc_feats = torch.cat([t.flatten(2).transpose(1, 2) for t in towers], dim=1)
        _, _, _, loc_of = anchor_locations(shapes, a)
        loc_of = loc_of.to(scores.device)

        def gather(idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
            loc = loc_of[idx]  # (B, N)
            f = torch.gather(loc_feats, 1, loc[..., None].expand(-1, -1, loc_feats.shape[2]))
            return f, torch.gather(scores, 1, idx), torch.gather(norm, 1, idx[..., None].expand(-1, -1, 4))

        top = scores.topk(num_rois, dim=1, largest=True, sorted=True).indices
        low = scores.topk(num_rois, dim=1, largest=False, sorted=True).indices
        pf, ps, pb = gather(top)
        nf, ns, nb = gather(low)
        per_level = [h * w * a for h, w in shapes]
        split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        split_anchors = [list(x.split(per_level)) for x in anchors]
        # threshold 0 then keep_top: the baseline always has a top-1 box (see detect_keep_top)
        thresh = model.score_thresh
        model.score_thresh = 0.0
        try:
            dets = model.postprocess_detections(split_head, split_anchors, il.image_sizes)
        finally:
            model.score_thresh = thresh
        dets = [keep_top(d, thresh) for d in dets]
        s = images.shape[-1]
        dets = model.transform.postprocess(dets, il.image_sizes, [(s, s)] * b)
    detections = []
    for i, d in enumerate(dets):
        boxes = d["boxes"].float()
        if original_sizes is not None:
            boxes = torch.as_tensor(
                scale_boxes(boxes.cpu().numpy(), (s, s), tuple(original_sizes[i])), dtype=torch.float32
            )
        detections.append({"boxes": boxes, "scores": d["scores"].float()})
    return RoiBatch(pf.float(), ps.float(), pb.float(), nf.float(), ns.float(), nb.float(), top, detections)


# -- ROI cache rows ---------------------------------------------------------------------------
def roi_columns(rois: RoiBatch) -> list[dict]:
    """One dict of ``grounding.schema.ROI_EXTRA`` values per image of the batch."""
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
