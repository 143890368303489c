"""Training, saving and loading the CAM / Grad-CAM baseline classifier (``grounding.detection.cam``).

Labels come from the prepared table (``pneumonia_targets``): 1 when ``pneumonia_label == 1`` or
the image has at least one box; 0 when ``pneumonia_label == 0`` or the image is box-annotated
(``has_boxes``) with zero boxes; otherwise unknown (-1) and left out of training. Pure torch on
CPU by design (a small baseline). Deterministic for a seed; the global RNG state and torch's thread
count are left untouched.

Speed. ``grounding evaluate`` trains on every grounding training image (thousands), so the defaults
are chosen for CPU time. Measured in one process on a claim-dev prepared folder (2,776 images of
192 px, 5 epochs, a busy 2-core machine): the layout before (128 px, 4 blocks, batch 16, torch's 2
threads) took 769 s (255 s on 1 thread), these defaults 30 s (41 s for 3,500 images). CAM top-1 hits
on the 492 held-out expert-boxed images at IoU 0.25 / 0.5, mean of seeds 0-2: 57.0 / 18.6 % (was
56.6 / 18.2 %; the old layout's seeds spread 46-63 %, these 56-58 %; seed 0 alone: 56.1 / 17.3 %,
was 63.0 / 21.7 %). Final training accuracy 0.74 (was 0.77).

* input 64 px (``eval.cam_input_size``), channels (16, 32, 64): a 16 x 16 feature map, as before
  (128 px with (16, 32, 64, 64)); 4 blocks at 64 px (an 8 x 8 map) gave boxes ~2.5x too large;
* a stride-2 first convolution instead of convolution + max-pool at full resolution (that block
  was about half the cost: 1-channel convolution, BatchNorm, ReLU and pooling on S x S maps);
* batches of 64 (was 16), learning rate 2e-3 (1e-3 x sqrt(64 / 16)); 4e-3 gave less stable boxes
  across seeds;
* the inputs are resized once, in chunks, and kept channels_last;
* one torch thread (``num_threads=1``): with another job on the machine, 2 threads were about 4x
  SLOWER than 1 (OpenMP threads wait for each other), and the result does not depend on the core
  count;
* BatchNorm statistics are recomputed after training (``_recompute_batchnorm_stats``): larger
  batches mean fewer steps, and the running averages lag.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from grounding.data import storage
from grounding.detection.cam import CamClassifier, to_input
from grounding.data.prepared import iter_images

log = logging.getLogger(__name__)


def pneumonia_targets(rows: Sequence[dict]) -> np.ndarray:
    """(N,) int8 targets 1 / 0 / -1 (unknown) from prepared or manifest rows (module docstring)."""
    out = np.full(len(rows), -1, dtype=np.int8)
    for i, r in enumerate(rows):
        label = r.get("pneumonia_label")
        n_boxes = len(r.get("boxes") or [])
        if label == 1 or n_boxes > 0:
            out[i] = 1
        elif label == 0 or (r.get("has_boxes") and n_boxes == 0):
            out[i] = 0
    return out


def train_cam_classifier_arrays(images: np.ndarray, labels: np.ndarray, epochs: int = 5, lr: float = 2e-3,
                                seed: int = 0, input_size: int = 64, batch_size: int = 64,
                                channels: Sequence[int] = (16, 32, 64), weight_decay: float = 1e-4,
                                history: list[dict] | None = None, stem_stride: int = 2,
                                num_threads: int | None = 1) -> CamClassifier:
    """Train on arrays.

    Defaults and speed: module docstring "Speed".

    Args:
        images: (N, S, S) uint8.
        labels: (N,) in {0, 1}; rows with other values are skipped.
        history: if given, one ``{"epoch", "loss", "accuracy", "seconds"}`` dict per epoch is appended
            (loss and accuracy are over the epoch's training batches, in training mode).
        stem_stride: ``CamClassifier``'s first-block stride (2 = the cheap stem).
        num_threads: torch intra-op threads while training (restored afterwards); None keeps the
            current setting.

    Returns:
        the trained ``CamClassifier`` in eval mode.
    """
    labels = np.asarray(labels)
    keep = np.isin(labels, (0, 1))
    images, labels = np.asarray(images)[keep], labels[keep].astype(np.float32)
    if len(labels) == 0 or labels.min() == labels.max():
        raise ValueError(f"CAM classifier needs both classes, got {int(labels.sum())} positive of {len(labels)}")
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        return _train(images, labels, epochs, lr, seed, input_size, batch_size, channels, weight_decay,
                      history, stem_stride)
    finally:
        torch.set_num_threads(threads_before)


def _train(images: np.ndarray, labels: np.ndarray, epochs: int, lr: float, seed: int, input_size: int,
           batch_size: int, channels: Sequence[int], weight_decay: float, history: list[dict] | None,
           stem_stride: int) -> CamClassifier:
    cl = torch.channels_last
    x_all = to_input(images, input_size).contiguous(memory_format=cl)
    y_all = torch.from_numpy(labels)
    # imbalance: weight positives by n_neg / n_pos so the classifier does not collapse to "normal"
    pos_weight = torch.tensor([(len(labels) - labels.sum()) / labels.sum()], dtype=torch.float32)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CamClassifier(channels, input_size, stem_stride)
    model = model.to(memory_format=cl)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(labels))
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start:start + batch_size])
            if len(idx) < 2:  # BatchNorm needs > 1 sample per batch in training mode
                continue
            xb, yb = x_all[idx].contiguous(memory_format=cl), y_all[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int(((logits.detach() > 0).float() == yb).sum())
            seen += len(idx)
        record = {"epoch": epoch, "loss": total / max(seen, 1), "accuracy": correct / max(seen, 1),
                  "seconds": time.perf_counter() - t0}
        log.info("cam classifier epoch %d loss %.4f accuracy %.3f (%.1f s)", epoch, record["loss"],
                 record["accuracy"], record["seconds"])
        if history is not None:
            history.append(record)
    _recompute_batchnorm_stats(model, x_all, batch_size)
    return model.to(memory_format=torch.contiguous_format).eval()


@torch.no_grad()
def _recompute_batchnorm_stats(model: nn.Module, x_all: torch.Tensor, batch_size: int) -> None:
    """Set BatchNorm running statistics to the final weights' averages over the training images.

    The running averages (momentum 0.1) lag the weights by about ten steps and start at (0, 1); with
    large batches a small training set gives few steps, and eval-mode outputs are then off (a toy
    set with 2 steps per epoch trained to 100 % then scored 50 % in eval mode). One forward pass in
    training mode with a cumulative average (momentum None) over fixed batches fixes that.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for start in range(0, len(x_all), batch_size):
        xb = x_all[start:start + batch_size]
        if len(xb) >= 2:
            model(xb.contiguous(memory_format=torch.channels_last))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum


def train_cam_classifier(prepared_table: pa.Table, epochs: int = 5, lr: float = 2e-3, seed: int = 0,
                         input_size: int = 64, batch_size: int = 64,
                         channels: Sequence[int] = (16, 32, 64), weight_decay: float = 1e-4,
                         history: list[dict] | None = None, stem_stride: int = 2,
                         num_threads: int | None = 1) -> CamClassifier:
    """Train the baseline on a prepared table (``grounding.data.prepared``) with ``pneumonia_targets``.

    Use only the training split of the detector/grounding sites; never the held-out eval boxes.
    """
    rows, images = [], []
    for row, pixels in iter_images(prepared_table):
        rows.append(row)
        images.append(pixels)
    if not images:
        raise ValueError("prepared table has no images")
    return train_cam_classifier_arrays(np.stack(images), pneumonia_targets(rows), epochs, lr, seed,
                                       input_size, batch_size, channels, weight_decay, history, stem_stride,
                                       num_threads)


def save_cam_classifier(model: CamClassifier, path: str) -> None:
    """state_dict + constructor config (plain data only), written atomically."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config_json": json.dumps(model.config()), "state_dict": state}, buf)
    storage.atomic_write_bytes(path, buf.getvalue())


def load_cam_classifier(path: str) -> CamClassifier:
    """Inverse of ``save_cam_classifier`` (``weights_only=True``); the model is in eval mode."""
    fs, p = storage.resolve(path)
    with fs.open_input_file(p) as f:
        blob = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    cfg = json.loads(blob["config_json"])
    model = CamClassifier(cfg["channels"], cfg["input_size"], cfg.get("stem_stride", 1))  # before the stem: 1
    model.load_state_dict(blob["state_dict"])
    return model.eval()
