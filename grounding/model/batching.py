"""ROI-cache rows -> padded tensors + masks (Ray-agnostic).

Input is a column batch ``dict[str, sequence]`` as Ray Data's ``iter_batches(batch_format="numpy")``
or ``pyarrow.Table.to_pydict()`` gives it. ROI counts may differ per image (``num_rois``) and
attribute counts per report: both are padded to the batch maximum with a mask.
A row whose features do not match its header (``num_rois`` x ``feature_dim`` float16) is dropped
with a warning naming its ``image_id`` (never the whole batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from grounding.text.vocabulary import ATTRIBUTE_INDEX, NUM_ATTRIBUTES

log = logging.getLogger(__name__)

# -- column names (grounding.data.schema MANIFEST_SCHEMA + ROI_EXTRA) --------------------------------
IMAGE_ID = "image_id"
ATTRIBUTES = "attributes"
PURPOSE = "purpose"
SPLIT = "split"
ROI_FEATURES = "roi_features"
ROI_SCORES = "roi_scores"
ROI_BOXES = "roi_boxes"
NEG_ROI_FEATURES = "neg_roi_features"
NEG_ROI_SCORES = "neg_roi_scores"
NEG_ROI_BOXES = "neg_roi_boxes"
NUM_ROIS = "num_rois"
FEATURE_DIM = "feature_dim"
TRAIN_COLUMNS = [
    IMAGE_ID, ATTRIBUTES, ROI_FEATURES, ROI_SCORES, ROI_BOXES,
    NEG_ROI_FEATURES, NEG_ROI_SCORES, NEG_ROI_BOXES, NUM_ROIS, FEATURE_DIM,
]
GROUNDING_PURPOSE = "grounding"


@dataclass
class RoiBatch:
    """A padded batch. B studies, K/Kn (negative) ROIs, M attributes, C features.

    Attributes:
        roi_features: (B, K, C) float32; roi_boxes: (B, K, 4) xyxy in [0, 1]; roi_scores: (B, K).
        roi_mask: (B, K) bool.
        neg_*: the same for the negative ROIs.
        attribute_ids: (B, M) long (padding 0); attribute_mask: (B, M) bool (M >= 1).
        targets: (B, 22) float multi-hot.
        image_ids: B pseudonymous image ids (for error messages; never PHI).
    """

    roi_features: torch.Tensor
    roi_boxes: torch.Tensor
    roi_scores: torch.Tensor
    roi_mask: torch.Tensor
    neg_roi_features: torch.Tensor
    neg_roi_boxes: torch.Tensor
    neg_roi_scores: torch.Tensor
    neg_roi_mask: torch.Tensor
    attribute_ids: torch.Tensor
    attribute_mask: torch.Tensor
    targets: torch.Tensor
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def to(self, device: torch.device | str) -> "RoiBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device, non_blocking=True)
        return RoiBatch(**kw)

    def take(self, index: torch.Tensor) -> RoiBatch:
        """Rows ``index`` (1-D long tensor) as a new batch; ROI features widened to float32."""
        kw: dict[str, Any] = {"image_ids": [self.image_ids[i] for i in index.tolist()]}
        for f in fields(self):
            if f.name != "image_ids":
                t = getattr(self, f.name).index_select(0, index.to(getattr(self, f.name).device))
                kw[f.name] = t.float() if f.name.endswith("roi_features") else t
        return RoiBatch(**kw)

    def with_other_study_negatives(self) -> "RoiBatch":
        """The batch with I_n = the positive ROIs of the next study (a roll by one over the batch).

        Harder negatives than the lowest-scored anchors (``loss.negative_rois=other_study``): they look
        like lesions, so only a match with this report's words can tell them apart. A batch of one
        study is its own negative, which makes the ROI-side term a constant (no gradient).
        """
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("roi_features", "roi_boxes", "roi_scores", "roi_mask"):
            kw[f"neg_{name}"] = kw[name].roll(1, dims=0)
        return RoiBatch(**kw)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of ``GroundingModel.forward``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("targets", "image_ids")}


def decode_features(data: bytes, num_rois: int, feature_dim: int) -> np.ndarray:
    """float16 row-major bytes -> (num_rois, feature_dim) float32; ValueError on a size mismatch."""
    expected = int(num_rois) * int(feature_dim) * 2
    if len(data) != expected:
        raise ValueError(f"features hold {len(data)} bytes, header says {num_rois}x{feature_dim} float16 = {expected}")
    return np.frombuffer(data, dtype=np.float16).reshape(int(num_rois), int(feature_dim)).astype(np.float32)


def _pad(arrays: Sequence[np.ndarray], width: int, tail: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(arrays), width, *tail), dtype=np.float32)
    mask = np.zeros((len(arrays), width), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = True
    return out, mask


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(np.asarray(value).reshape(-1)) if not isinstance(value, (list, tuple)) else list(value)


def _row_rois(batch: Mapping[str, Any], i: int, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.asarray(_as_list(batch[f"{prefix}roi_scores"][i]), dtype=np.float32)
    n = len(scores)
    feats = decode_features(bytes(batch[f"{prefix}roi_features"][i]), n, int(batch[FEATURE_DIM][i]))
    boxes = np.asarray(_as_list(batch[f"{prefix}roi_boxes"][i]), dtype=np.float32)
    if boxes.size != 4 * n:
        raise ValueError(f"{prefix}roi_boxes holds {boxes.size} values for {n} ROIs")
    if not (np.isfinite(feats).all() and np.isfinite(scores).all() and np.isfinite(boxes).all()):
        raise ValueError(f"{prefix}ROI features/scores/boxes contain NaN or Inf")
    return feats, boxes.reshape(n, 4), scores


def collate_rois(batch: Mapping[str, Any]) -> RoiBatch | None:
    """Column batch -> :class:`RoiBatch`; None if no row survives validation.

    Unknown attribute names are ignored (logged once per batch); the vocabulary is fixed.
    """
    n_rows = len(batch[IMAGE_ID])
    pos, neg, attrs, ids = [], [], [], []
    unknown: set[str] = set()
    for i in range(n_rows):  # per-row decode of bytes; all model math is batched
        image_id = str(batch[IMAGE_ID][i])
        try:
            p = _row_rois(batch, i, "")
            q = _row_rois(batch, i, "neg_")
        except (ValueError, TypeError) as err:
            log.warning("skipping ROI row image_id=%s: %s", image_id, err)
            continue
        names = [str(a) for a in _as_list(batch[ATTRIBUTES][i])]
        unknown.update(a for a in names if a not in ATTRIBUTE_INDEX)
        attrs.append(sorted({ATTRIBUTE_INDEX[a] for a in names if a in ATTRIBUTE_INDEX}))
        pos.append(p)
        neg.append(q)
        ids.append(image_id)
    if unknown:
        log.warning("ignoring attribute names outside the vocabulary: %s", sorted(unknown))
    if not ids:
        return None
    c = pos[0][0].shape[1]
    k = max(1, max(len(p[2]) for p in pos))
    kn = max(1, max(len(q[2]) for q in neg))
    m = max(1, max(len(a) for a in attrs))  # >= 1 so shapes stay valid for all-negative batches
    feats, mask = _pad([p[0] for p in pos], k, (c,))
    boxes, _ = _pad([p[1] for p in pos], k, (4,))
    scores, _ = _pad([p[2] for p in pos], k, ())
    nfeats, nmask = _pad([q[0] for q in neg], kn, (c,))
    nboxes, _ = _pad([q[1] for q in neg], kn, (4,))
    nscores, _ = _pad([q[2] for q in neg], kn, ())
    attr_ids = np.zeros((len(ids), m), dtype=np.int64)
    attr_mask = np.zeros((len(ids), m), dtype=bool)
    targets = np.zeros((len(ids), NUM_ATTRIBUTES), dtype=np.float32)
    for i, a in enumerate(attrs):
        attr_ids[i, : len(a)] = a
        attr_mask[i, : len(a)] = True
        targets[i, a] = 1.0
    t = torch.from_numpy
    return RoiBatch(
        roi_features=t(feats), roi_boxes=t(boxes), roi_scores=t(scores), roi_mask=t(mask),
        neg_roi_features=t(nfeats), neg_roi_boxes=t(nboxes), neg_roi_scores=t(nscores), neg_roi_mask=t(nmask),
        attribute_ids=t(attr_ids), attribute_mask=t(attr_mask), targets=t(targets), image_ids=ids,
    )


def select_rows(table: pa.Table, split: str, purpose: str = GROUNDING_PURPOSE) -> pa.Table:
    """Rows of one split used for grounding (``purpose == grounding``)."""
    keep = pc.and_(pc.equal(table[PURPOSE], purpose), pc.equal(table[SPLIT], split))
    return table.filter(keep)


def iter_table_batches(table: pa.Table, batch_size: int) -> Iterator[RoiBatch]:
    """Plain (Ray-free) batches over an in-memory table, in order."""
    cols = [c for c in TRAIN_COLUMNS if c in table.column_names]
    for start in range(0, table.num_rows, batch_size):
        b = collate_rois(table.slice(start, batch_size).select(cols).to_pydict())
        if b is not None:
            yield b


class InMemoryShard:
    """A worker's data shard read once, collated once, then re-batched every epoch by indexing.

    The ROI cache is small (about 10 KiB per image at the default size), so pulling a worker's shard
    through the data pipeline every epoch, or decoding and padding its rows in Python every step, costs
    more than the training step it feeds. Here every row is validated and padded once (ROI features kept
    in float16, as in the cache, and widened per batch) and an epoch only indexes tensors with a seeded
    permutation. Padding is to the shard's maxima, which masks make invisible to the model.

    ``batches`` yields ``ceil(rows read / batch_size)`` items, rows dropped as invalid included, with
    ``None`` where no valid row is left: every DDP rank takes the same number of steps.
    """

    def __init__(self, tables: Iterable[pa.Table], device: torch.device | str = "cpu", chunk_rows: int = 1024):
        parts = [t for t in tables if t.num_rows]
        table = pa.concat_tables(parts) if parts else None
        self.rows_read = 0 if table is None else table.num_rows
        chunks: list[RoiBatch] = []
        for start in range(0, self.rows_read, chunk_rows):  # bounded float32 transients while collating
            cols = [c for c in TRAIN_COLUMNS if c in table.column_names]
            batch = collate_rois(table.slice(start, chunk_rows).select(cols).to_pydict())
            if batch is not None:
                chunks.append(batch)
        self.data = _concat_padded(chunks, torch.device(device)) if chunks else None

    @property
    def num_rows(self) -> int:
        """Valid rows held (rows read minus rows dropped as invalid)."""
        return 0 if self.data is None else len(self.data)

    def batches(self, batch_size: int, seed: int | None = None) -> Iterator[RoiBatch | None]:
        """Batches in a seeded random order (``seed=None``: stored order)."""
        n = self.num_rows
        order = torch.arange(n) if seed is None else torch.from_numpy(np.random.default_rng(seed).permutation(n))
        for start in range(0, self.rows_read, batch_size):
            idx = order[start:start + batch_size]
            yield self.data.take(idx) if len(idx) else None


def _pad_dim1(t: torch.Tensor, width: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.zeros((t.shape[0], width - t.shape[1], *t.shape[2:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=1)


def _concat_padded(chunks: Sequence[RoiBatch], device: torch.device) -> RoiBatch:
    """One RoiBatch from several, padded to their maxima; ROI features stored as float16."""
    widths = {name: max(getattr(c, name).shape[1] for c in chunks)
              for name in ("roi_features", "neg_roi_features", "attribute_ids")}
    group = {"roi_features": "roi_features", "roi_boxes": "roi_features", "roi_scores": "roi_features",
             "roi_mask": "roi_features", "neg_roi_features": "neg_roi_features", "neg_roi_boxes": "neg_roi_features",
             "neg_roi_scores": "neg_roi_features", "neg_roi_mask": "neg_roi_features",
             "attribute_ids": "attribute_ids", "attribute_mask": "attribute_ids"}
    out: dict[str, Any] = {"image_ids": [i for c in chunks for i in c.image_ids]}
    for f in fields(RoiBatch):
        if f.name == "image_ids":
            continue
        parts = [getattr(c, f.name) for c in chunks]
        if f.name in group:
            parts = [_pad_dim1(p, widths[group[f.name]]) for p in parts]
        t = torch.cat(parts)
        out[f.name] = (t.half() if f.name.endswith("roi_features") else t).to(device)
    return RoiBatch(**out)


def collate_iter(batches: Iterable[Mapping[str, Any]], keep_empty: bool = False) -> Iterator[RoiBatch | None]:
    """Column batches (e.g. a Ray Data shard's ``iter_batches``) -> RoiBatches.

    A batch in which no row survives is dropped, or yielded as ``None`` with ``keep_empty`` so that
    every DDP rank still takes the same number of steps (the engine skips it on all ranks).
    """
    for raw in batches:
        b = collate_rois(raw)
        if b is not None or keep_empty:
            yield b


__all__ = [
    "ATTRIBUTES",
    "FEATURE_DIM",
    "GROUNDING_PURPOSE",
    "IMAGE_ID",
    "NEG_ROI_BOXES",
    "NEG_ROI_FEATURES",
    "NEG_ROI_SCORES",
    "NUM_ROIS",
    "PURPOSE",
    "ROI_BOXES",
    "ROI_FEATURES",
    "ROI_SCORES",
    "SPLIT",
    "TRAIN_COLUMNS",
    "InMemoryShard",
    "RoiBatch",
    "collate_iter",
    "collate_rois",
    "decode_features",
    "iter_table_batches",
    "select_rows",
]
