"""CAM and Grad-CAM baselines (paper Table 1): a pneumonia classifier whose heat map gives a box.

The classifier (``CamClassifier``) is a small CNN: conv blocks (the first with stride 2) -> feature
map F (B, C, h, w) -> global average pooling -> one linear unit -> pneumonia logit. Heat maps:

* CAM (Zhou et al. 2016): ``M = sum_c w_c F_c`` with ``w`` the linear weights (bias left out).
* Grad-CAM (Selvaraju et al. 2017): ``M = ReLU(sum_c a_c F_c)``, ``a_c`` = spatial mean of
  d logit / d F_c. For GAP + linear, ``a_c = w_c / (h w)``, so Grad-CAM = ReLU(CAM) / (h w):
  after normalisation both give the same box (a tested identity; they differ for deeper heads).

Box rule (one rule for both methods, used for Table 1):

1. Normalise: ``M <- ReLU(M) / max(ReLU(M))`` (an all-non-positive map gives no box).
2. Upsample bilinearly (align_corners=False) to the prepared image size S x S.
3. Keep pixels with ``M >= threshold`` (default 0.5, i.e. half the maximum).
4. Take the largest 4-connected component of the kept pixels (ties: the larger heat sum, then
   the first in raster order) and return its bounding box in pixel-edge coordinates: a component
   covering columns i..j and rows k..l gives xyxy ``(i, k, j + 1, l + 1)``.
5. Map the box to ORIGINAL pixels with ``grounding.data.boxes.scale_boxes`` (S, S) -> (height, width).

The box's score is the classifier's pneumonia probability sigmoid(logit). Training lives in
``grounding.detection.cam_train``.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from grounding.data.boxes import scale_boxes

DEFAULT_THRESHOLD = 0.5


class CamMethod(str, enum.Enum):
    CAM = "cam"
    GRADCAM = "gradcam"


class CamPrediction(NamedTuple):
    """One image's baseline output: ``boxes`` (K, 4) xyxy with K in {0, 1}, ``score`` in [0, 1]."""

    boxes: np.ndarray
    score: float


class CamClassifier(nn.Module):
    """Small CNN for 1-channel chest images: (B, 1, S, S) -> logits (B,).

    Args:
        channels: output channels of each conv block; every block but the last halves the size,
            so the feature map is S / 2**(len(channels) - 1) pixels wide.
        input_size: S, the side images are resized to (kept here so a checkpoint knows it).
        stem_stride: how the FIRST block halves: 2 = its 3x3 convolution has stride 2 (the cheap
            stem: no full-resolution activations, BatchNorm or pooling); 1 = a stride-1 convolution
            then max-pooling (the layout before the stem; checkpoints without the field load so).
            Later blocks always halve by max-pooling; a single block never halves.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), input_size: int = 64, stem_stride: int = 2):
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.channels = tuple(int(c) for c in channels)
        self.input_size = int(input_size)
        self.stem_stride = int(stem_stride)
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(self.channels):
            halve = i < len(self.channels) - 1
            stride = 2 if (i == 0 and halve and self.stem_stride == 2) else 1
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            if halve and stride == 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> F (B, C, h, w)."""
        return self.body(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """F (B, C, h, w) -> logits (B,): global average pooling then the linear unit."""
        return self.fc(feats.mean(dim=(2, 3))).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def config(self) -> dict:
        return {"channels": list(self.channels), "input_size": self.input_size,
                "stem_stride": self.stem_stride}


def to_input(images: np.ndarray | Sequence[np.ndarray], input_size: int, chunk: int = 256) -> torch.Tensor:
    """uint8 images (N, S, S) -> float (N, 1, input_size, input_size), scaled to about [-2, 2].

    Converted ``chunk`` images at a time (antialiased bilinear resize is per image, so the result
    does not depend on ``chunk``): the float copy at full size never exists for all N at once.
    """
    arr = np.stack([np.asarray(im) for im in images]) if not isinstance(images, np.ndarray) else images
    if arr.ndim != 3:
        raise ValueError(f"expected (N, H, W) grey images, got shape {arr.shape}")
    out = torch.empty((len(arr), 1, input_size, input_size), dtype=torch.float32)
    for start in range(0, len(arr), chunk):
        part = np.ascontiguousarray(arr[start:start + chunk], dtype=np.float32) / 255.0
        x = torch.from_numpy(part).unsqueeze(1)
        if x.shape[-2:] != (input_size, input_size):
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        out[start:start + chunk] = (x - 0.5) / 0.25
    return out


def raw_heatmaps(model: CamClassifier, x: torch.Tensor, method: CamMethod) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised heat maps on the feature grid and the logits.

    Args:
        x: (B, 1, S, S) model input (``to_input``).

    Returns:
        (maps (B, h, w), logits (B,)). CAM may be negative; Grad-CAM is >= 0.
    """
    method = CamMethod(method)
    model.eval()
    with torch.enable_grad():
        feats = model.features(x).detach().requires_grad_(method is CamMethod.GRADCAM)
        logits = model.head(feats)
        if method is CamMethod.CAM:
            maps = torch.einsum("bchw,c->bhw", feats, model.fc.weight[0])
        else:
            # sum of logits: each image's logit depends only on its own features
            (grads,) = torch.autograd.grad(logits.sum(), feats)
            alpha = grads.mean(dim=(2, 3))  # (B, C)
            maps = torch.relu(torch.einsum("bchw,bc->bhw", feats, alpha))
    return maps.detach(), logits.detach()


def normalise_map(maps: torch.Tensor) -> torch.Tensor:
    """Rule step 1: (B, h, w) -> ReLU(M) / max, per image; an all-non-positive map stays 0."""
    m = torch.relu(maps)
    peak = m.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return torch.where(m.flatten(1).amax(dim=1)[:, None, None] > 0, m / peak, torch.zeros_like(m))


def box_from_heatmap(heat: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Rule steps 3-4 on one normalised map (H, W) in [0, 1] -> (K, 4) xyxy in its pixels, K in {0, 1}.

    ``threshold`` is relative to the map's maximum (the map is re-divided by its max, so an
    unnormalised non-negative map gives the same box).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    h = np.asarray(heat, dtype=np.float64)
    peak = float(h.max()) if h.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return np.zeros((0, 4))
    mask = h >= threshold * peak
    labels, n = ndimage.label(mask)  # default structure = 4-connectivity
    if n == 0:
        return np.zeros((0, 4))
    ids = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(h), labels, ids)
    mass = ndimage.sum_labels(h, labels, ids)
    best = int(ids[np.lexsort((ids, -mass, -sizes))[0]])  # largest, then heaviest, then first
    rows, cols = np.nonzero(labels == best)
    return np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=np.float64)


def heatmaps(model: CamClassifier, images: np.ndarray | Sequence[np.ndarray], method: CamMethod,
             batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Normalised maps upsampled to the images' size, and pneumonia probabilities.

    Args:
        images: (N, S, S) uint8 (prepared pixels).

    Returns:
        (maps (N, S, S) float32 in [0, 1], probabilities (N,)).
    """
    images = np.asarray(images)
    size = images.shape[-2:]
    maps, probs = [], []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start:start + batch_size], model.input_size)
        raw, logits = raw_heatmaps(model, x, method)
        m = normalise_map(raw)[:, None]
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        maps.append(m.numpy().astype(np.float32))
        probs.append(torch.sigmoid(logits).numpy())
    if not maps:
        return np.zeros((0, *size), dtype=np.float32), np.zeros(0)
    return np.concatenate(maps), np.concatenate(probs).astype(np.float64)


def cam_boxes(model: CamClassifier, images: np.ndarray | Sequence[np.ndarray],
              method: CamMethod = CamMethod.CAM, threshold: float = DEFAULT_THRESHOLD,
              original_sizes: Sequence[tuple[int, int]] | None = None,
              batch_size: int = 32) -> list[CamPrediction]:
    """The baseline's box per image, by the module's box rule.

    Args:
        images: (N, S, S) uint8 prepared images.
        method: ``CamMethod.CAM`` or ``CamMethod.GRADCAM``.
        threshold: fraction of the map's maximum (rule step 3).
        original_sizes: per image (height, width) of the ORIGINAL image; boxes are mapped there.
            None keeps boxes in the S x S prepared pixels.

    Returns:
        N ``CamPrediction(boxes (K, 4) xyxy, score)``, K = 0 when the map is empty.
    """
    images = np.asarray(images)
    if original_sizes is not None and len(original_sizes) != len(images):
        raise ValueError(f"{len(original_sizes)} original sizes for {len(images)} images")
    maps, probs = heatmaps(model, images, CamMethod(method), batch_size)
    out = []
    for i, (m, p) in enumerate(zip(maps, probs)):
        box = box_from_heatmap(m, threshold)
        if original_sizes is not None and len(box):
            box = scale_boxes(box, m.shape, tuple(original_sizes[i]))
        out.append(CamPrediction(box, float(p)))
    return out
