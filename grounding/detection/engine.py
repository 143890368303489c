"""Supervised RetinaNet training and evaluation over prepared images: plain torch, no Ray.

Samples come from the prepared-image cache (``grounding.data.prepared``): rows with a box annotation
(``has_boxes``) and ``purpose == "detector"``. Zero-box rows are negatives (torchvision RetinaNet
takes ``boxes`` of shape (0, 4)); boxes are read from ``boxes_prepared`` (prepared px), clipped to
the image, and boxes under ``MIN_BOX_PX`` wide or high are dropped (torchvision asserts on
degenerate boxes). Augmentation (optional, ``augment_batch``): horizontal flip with the boxes
mirrored, and a mild random gamma/contrast change; the learning rate follows a linear warmup then a
cosine decay per step (``make_scheduler``).
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

from grounding.evaluation import metrics
from grounding.data.boxes import clip_boxes, unflatten
from grounding.detection.detector import PNEUMONIA_LABEL, detect_keep_top, to_three_channels
from grounding.data.prepared import bytes_to_pixels

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


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, final_fraction: float = 0.02
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor: linear warmup from ~0 over ``warmup_steps``, then cosine decay to
    ``final_fraction`` of the base LR at ``total_steps`` (stepped once per optimizer step)."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = max(min(int(warmup_steps), total_steps - 1), 0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def augment_batch(
    images: torch.Tensor, boxes: list[torch.Tensor], generator: torch.Generator, hflip: bool = True,
    photometric: float = 0.0,
    scale_jitter: float = 0.0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random horizontal flip (boxes mirrored), zoom/shift and gamma/contrast jitter, per image.

    Args:
        images: (B, 1, S, S) float in [0, 1].
        boxes: B tensors (K, 4) xyxy in px of the S x S image.
        generator: the RNG (seeded by the caller: same seed, same augmentation).
        hflip: flip each image with probability 0.5.
        photometric: strength p of the jitter: gamma in [1-p, 1+p], contrast in [1-p/2, 1+p/2] (0 = off).
        scale_jitter: q: zoom by z in [1-q, 1+q] about the centre and shift by up to q/2 of the side
            on each axis (black fill; boxes moved alike, clipped, and dropped when under
            ``MIN_BOX_PX`` or under a third of their area remains); 0 = off.

    Returns:
        The augmented images (new tensor) and boxes.
    """
    images = images.clone()
    s = images.shape[-1]
    out_boxes = []
    for i, b in enumerate(boxes):
        u = torch.rand(6, generator=generator).tolist()
        if hflip and u[0] < 0.5:
            images[i] = images[i].flip(-1)
            b = torch.stack([s - b[:, 2], b[:, 1], s - b[:, 0], b[:, 3]], dim=1) if len(b) else b
        if scale_jitter > 0:
            images[i], b = _zoom_shift(images[i], b, 1.0 + scale_jitter * (2 * u[3] - 1),
                                       scale_jitter * (2 * u[4] - 1), scale_jitter * (2 * u[5] - 1))
        if photometric > 0:
            gamma = 1.0 + photometric * (2 * u[1] - 1)
            contrast = 1.0 + 0.5 * photometric * (2 * u[2] - 1)
            x = images[i].clamp_(0, 1).pow_(gamma)
            mean = x.mean()
            images[i] = ((x - mean) * contrast + mean).clamp_(0, 1)
        out_boxes.append(b)
    return images, out_boxes


def _zoom_shift(
    image: torch.Tensor, boxes: torch.Tensor, zoom: float, tx: float, ty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, S, S) image and (K, 4) px boxes -> zoomed by ``zoom`` about the centre, then shifted by
    (tx, ty) in normalised [-1, 1] units (i.e. tx * S / 2 px)."""
    s = image.shape[-1]
    theta = torch.tensor([[1 / zoom, 0.0, -tx / zoom], [0.0, 1 / zoom, -ty / zoom]], dtype=image.dtype)
    grid = torch.nn.functional.affine_grid(theta[None], [1, 1, s, s], align_corners=False)
    out = torch.nn.functional.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)[0]
    if not len(boxes):
        return out, boxes
    shift = torch.tensor([tx, ty, tx, ty], dtype=boxes.dtype)
    moved = ((boxes * (2.0 / s) - 1.0) * zoom + shift + 1.0) * (s / 2.0)
    clipped = moved.clamp(0, s)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    keep = (w >= MIN_BOX_PX) & (h >= MIN_BOX_PX) & (w * h >= area / 3.0)
    return out, clipped[keep]


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[list[Sample]],
    device: torch.device | str = "cpu",
    grad_clip: float = 0.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    hflip: bool = False,
    photometric: float = 0.0,
    generator: torch.Generator | None = None,
    scale_jitter: float = 0.0,
) -> dict[str, float]:
    """One pass of supervised RetinaNet training.

    Args:
        model: a torchvision RetinaNet (or DDP around one) returning its loss dict in train mode.
        batches: lists of samples (the caller decides order and the rank's share).
        grad_clip: max gradient norm (0 = off).
        scheduler: stepped after every optimizer step (``make_scheduler``), or None.
        hflip, photometric, scale_jitter: augmentation (``augment_batch``); off by default.
        generator: RNG for the augmentation (default: seeded 0).

    Returns:
        ``{"loss", "loss_classification", "loss_box", "steps", "images", "seconds"}`` (means per step).

    Raises:
        NonFiniteLossError: the loss is NaN/Inf; the step is not applied.
    """
    model.train()
    totals = {"loss": 0.0, "classification": 0.0, "bbox_regression": 0.0}
    steps = images = 0
    t0 = time.perf_counter()
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    for batch in batches:
        imgs = stack_images(batch, "cpu")
        boxes = [s.boxes for s in batch]
        if hflip or photometric > 0 or scale_jitter > 0:
            imgs, boxes = augment_batch(imgs, boxes, generator, hflip, photometric, scale_jitter)
        imgs = to_three_channels(imgs.to(device))
        targets = [
            {"boxes": b.to(device),
             "labels": torch.full((len(b),), PNEUMONIA_LABEL, dtype=torch.int64, device=device)}
            for b in boxes
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
        if scheduler is not None:
            scheduler.step()
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
    """Post-NMS detections per sample: ``boxes`` (K, 4) prepared px, ``scores`` (K,), descending;
    at least the top box even below the score threshold (``detector.detect_keep_top``)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in _batches(samples, batch_size):
            dets = detect_keep_top(model, to_three_channels(stack_images(batch, device)))
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
    """Localization accuracy (top-1 box, ``grounding.evaluation.metrics`` rule) and AP@0.5 on ``samples``.

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
