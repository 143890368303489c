"""Training, saving and loading the CAM / Grad-CAM baseline classifier (``grounding.cam``).

Labels come from the prepared table (``pneumonia_targets``): 1 when ``pneumonia_label == 1`` or
the image has at least one box; 0 when ``pneumonia_label == 0`` or the image is box-annotated
(``has_boxes``) with zero boxes; otherwise unknown (-1) and left out of training. Pure torch on
CPU by design (a small baseline). Deterministic for a seed; the global RNG state is left untouched.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from grounding import storage
from grounding.cam import CamClassifier, to_input
from grounding.prepared import iter_images

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


def train_cam_classifier_arrays(images: np.ndarray, labels: np.ndarray, epochs: int = 5, lr: float = 1e-3,
                                seed: int = 0, input_size: int = 128, batch_size: int = 16,
                                channels: Sequence[int] = (16, 32, 64, 64), weight_decay: float = 1e-4,
                                history: list[dict] | None = None) -> CamClassifier:
    """Train on arrays.

    Args:
        images: (N, S, S) uint8.
        labels: (N,) in {0, 1}; rows with other values are skipped.
        history: if given, one ``{"epoch", "loss", "accuracy"}`` dict per epoch is appended.

    Returns:
        the trained ``CamClassifier`` in eval mode.
    """
    labels = np.asarray(labels)
    keep = np.isin(labels, (0, 1))
    images, labels = np.asarray(images)[keep], labels[keep].astype(np.float32)
    if len(labels) == 0 or labels.min() == labels.max():
        raise ValueError(f"CAM classifier needs both classes, got {int(labels.sum())} positive of {len(labels)}")
    x_all = to_input(images, input_size)
    y_all = torch.from_numpy(labels)
    # imbalance: weight positives by n_neg / n_pos so the classifier does not collapse to "normal"
    pos_weight = torch.tensor([(len(labels) - labels.sum()) / labels.sum()], dtype=torch.float32)
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CamClassifier(channels, input_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(labels))
        total, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start:start + batch_size])
            if len(idx) < 2:  # BatchNorm needs > 1 sample per batch in training mode
                continue
            logits = model(x_all[idx])
            loss = loss_fn(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            correct += int(((logits > 0).float() == y_all[idx]).sum())
        record = {"epoch": epoch, "loss": total / len(labels), "accuracy": correct / len(labels)}
        log.info("cam classifier epoch %d loss %.4f accuracy %.3f", epoch, record["loss"], record["accuracy"])
        if history is not None:
            history.append(record)
    return model.eval()


def train_cam_classifier(prepared_table: pa.Table, epochs: int = 5, lr: float = 1e-3, seed: int = 0,
                         input_size: int = 128, batch_size: int = 16,
                         channels: Sequence[int] = (16, 32, 64, 64), weight_decay: float = 1e-4,
                         history: list[dict] | None = None) -> CamClassifier:
    """Train the baseline on a prepared table (``grounding.prepared``) with ``pneumonia_targets``.

    Use only the training split of the detector/grounding sites; never the held-out eval boxes.
    """
    rows, images = [], []
    for row, pixels in iter_images(prepared_table):
        rows.append(row)
        images.append(pixels)
    if not images:
        raise ValueError("prepared table has no images")
    return train_cam_classifier_arrays(np.stack(images), pneumonia_targets(rows), epochs, lr, seed,
                                       input_size, batch_size, channels, weight_decay, history)


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
    model = CamClassifier(cfg["channels"], cfg["input_size"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()
