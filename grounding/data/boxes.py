"""The one box convention: xyxy, float, in pixels of the original image.

Adapters convert once at ingest (RSNA/ChestX-ray8 ``x, y, w, h``); everything after the manifest
uses xyxy. Resizing an image scales boxes by the actual size ratio, never a hard-coded 1024.
"""

from __future__ import annotations

import numpy as np


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x, y, width, height -> (N, 4) x1, y1, x2, y2."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip to the image and drop boxes left with zero area (outside the image or degenerate)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return b[keep]


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Map xyxy boxes from an image of size ``from_hw`` (height, width) to one of ``to_hw``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sy = to_hw[0] / from_hw[0]
    sx = to_hw[1] / from_hw[1]
    return b * np.array([sx, sy, sx, sy])


def normalise_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """xyxy pixels -> xyxy in [0, 1]."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b / np.array([width, height, width, height])


def flatten(boxes: np.ndarray) -> list[float]:
    """(N, 4) -> flat list of 4N floats (the Parquet storage form)."""
    return [float(v) for v in np.asarray(boxes, dtype=np.float64).reshape(-1)]


def unflatten(flat) -> np.ndarray:
    """Flat list of 4N floats (or None) -> (N, 4) float64 array; empty gives shape (0, 4)."""
    if flat is None:
        return np.zeros((0, 4))
    return np.asarray(list(flat), dtype=np.float64).reshape(-1, 4)
