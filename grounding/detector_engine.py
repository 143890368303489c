"""Supervised RetinaNet training and evaluation over prepared images: plain torch, no Ray.

Samples come from the prepared-image cache (``grounding.prepared``): rows with a box annotation
(``has_boxes``) and ``purpose == "detector"``. Zero-box rows are negatives (torchvision RetinaNet
takes ``boxes`` of shape (0, 4)); boxes are read from ``boxes_prepared`` (prepared px), clipped to
the image, and boxes under ``MIN_BOX_PX`` wide or high are dropped (torchvision asserts on
degenerate boxes). No augmentation: the recipe is deliberately simple.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from grounding import metrics
from grounding.boxes import clip_boxes, unflatten
from grounding.detector import PNEUMONIA_LABEL, to_three_channels
from grounding.prepared import bytes_to_pixels

log = logging.getLogger(__name__)

MIN_BOX_PX = 1.0
DETECTOR_PURPOSE = "detector"
TRAIN_COLUMNS = ["image_id", "split", "purpose", "has_boxes", "image_size", "pixels", "boxes_prepared"]


class Optimizer(str, enum.Enum):
    SGD = "sgd"
    ADAMW = "adamw"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; the step is not applied and nothing after it is checkpointed."""


@dataclass
class Sample:
    """One prepared image for the detector: image (1, S, S) uint8 (kept small; made float per batch),
    boxes (K, 4) float32 prepared px."""

    image_id: str
    image: torch.Tensor
    boxes: torch.Tensor


def detector_rows(table: pa.Table, split: str | None = None) -> pa.Table:
    """Rows usable for supervised detector training: purpose detector, has_boxes, optional split."""
    mask = pc.and_(pc.equal(table["purpose"], DETECTOR_PURPOSE), pc.equal(table["has_boxes"], True))
    if split is not None:
        mask = pc.and_(mask, pc.equal(table["split"], split))
    return table.filter(mask)


def clean_boxes(flat: Sequence[float] | None, image_size: int) -> np.ndarray:
    """Flat xyxy prepared px -> (K, 4) clipped to the image, boxes < MIN_BOX_PX wide/high dropped."""
    b = clip_boxes(unflatten(flat), image_size, image_size)
    keep = ((b[:, 2] - b[:, 0]) >= MIN_BOX_PX) & ((b[:, 3] - b[:, 1]) >= MIN_BOX_PX)
    return b[keep]


def samples_from_table(table: pa.Table) -> list[Sample]:
    """Prepared rows -> samples (uint8 pixels: 64 KiB per 256 px image)."""
    out = []
    for row in table.select(["image_id", "image_size", "pixels", "boxes_prepared"]).to_pylist():
        s = int(row["image_size"])
        img = torch.from_numpy(bytes_to_pixels(row["pixels"], s).copy())[None]
        boxes = torch.as_tensor(clean_boxes(row["boxes_prepared"], s), dtype=torch.float32)
        out.append(Sample(row["image_id"], img, boxes))
    return out


def stack_images(batch: Sequence[Sample], device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 1, S, S) float in [0, 1] on ``device``."""
    return torch.stack([s.image for s in batch]).to(device).float().div_(255.0)


def _batches(samples: Sequence[Sample], batch_size: int) -> Iterable[list[Sample]]:
    for i in range(0, len(samples), batch_size):
        yield list(samples[i : i + batch_size])


def make_optimizer(params, kind: Optimizer | str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if Optimizer(kind) is Optimizer.SGD:
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[list[Sample]],
    device: torch.device | str = "cpu",
    grad_clip: float = 0.0,
) -> dict[str, float]:
    """One pass of supervised RetinaNet training.

    Args:
        model: a torchvision RetinaNet (or DDP around one) returning its loss dict in train mode.
        batches: lists of samples (the caller decides order and the rank's share).
        grad_clip: max gradient norm (0 = off).

    Returns:
        ``{"loss", "loss_classification", "loss_box", "steps", "images", "seconds"}`` (means per step).

    Raises:
        NonFiniteLossError: the loss is NaN/Inf; the step is not applied.
    """
    model.train()
    totals = {"loss": 0.0, "classification": 0.0, "bbox_regression": 0.0}
    steps = images = 0
    t0 = time.perf_counter()
    for batch in batches:
        imgs = to_three_channels(stack_images(batch, device))
        targets = [
            {"boxes": s.boxes.to(device),
             "labels": torch.full((len(s.boxes),), PNEUMONIA_LABEL, dtype=torch.int64, device=device)}
            for s in batch
        ]
        losses = model(imgs, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            ids = ",".join(s.image_id for s in batch)
            raise NonFiniteLossError(f"non-finite detector loss at step {steps} (images {ids})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        totals["loss"] += loss.item()
        for k in ("classification", "bbox_regression"):
            totals[k] += losses[k].item()
        steps += 1
        images += len(batch)
    n = max(steps, 1)
    return {
        "loss": totals["loss"] / n,
        "loss_classification": totals["classification"] / n,
        "loss_box": totals["bbox_regression"] / n,
        "steps": float(steps),
        "images": float(images),
        "seconds": time.perf_counter() - t0,
    }


def predict(
    model: torch.nn.Module, samples: Sequence[Sample], batch_size: int = 8, device: torch.device | str = "cpu"
) -> list[dict[str, np.ndarray]]:
    """Post-NMS detections per sample: ``boxes`` (K, 4) prepared px, ``scores`` (K,), descending."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in _batches(samples, batch_size):
            dets = model(to_three_channels(stack_images(batch, device)))
            out += [{"boxes": d["boxes"].cpu().numpy().astype(np.float64),
                     "scores": d["scores"].cpu().numpy().astype(np.float64)} for d in dets]
    model.train(was_training)
    return out


def evaluate(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    thresholds: Sequence[float] = (0.25, 0.5),
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Localization accuracy (top-1 box, ``grounding.metrics`` rule) and AP@0.5 on ``samples``.

    Returns:
        ``hit_iou25``, ``hit_iou50``, ... , ``ap50``, ``num_images_with_boxes``, ``mean_best_iou``;
        empty dict when there are no samples.
    """
    if not samples:
        return {}
    preds = predict(model, samples, batch_size, device)
    gts = [s.boxes.numpy().astype(np.float64) for s in samples]
    out = metrics.localization_accuracy([p["boxes"] for p in preds], gts, thresholds, top_k=1)
    out[metrics.AP50] = metrics.average_precision(
        [p["boxes"] for p in preds], [p["scores"] for p in preds], gts, 0.5
    )
    return out


def epoch_order(n: int, world_size: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The same shuffled index order on every rank, padded by wrapping to a multiple of
    ``world_size * batch_size`` so every rank runs the same number of steps (DDP never waits on a
    rank that ran out of data)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    chunk = world_size * batch_size
    total = int(math.ceil(n / chunk) * chunk)
    return np.resize(order, total)


def rank_batches(
    samples: Sequence[Sample], rank: int, world_size: int, batch_size: int, seed: int, epoch: int
) -> list[list[Sample]]:
    """This rank's batches of one epoch: rank r takes every world_size-th sample of the shared order."""
    order = epoch_order(len(samples), world_size, batch_size, seed, epoch)[rank::world_size]
    return [[samples[i] for i in order[j : j + batch_size]] for j in range(0, len(order), batch_size)]
