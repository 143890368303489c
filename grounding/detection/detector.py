"""torchvision RetinaNet: build (random init or a local, checksummed weights file), freeze, export.

One class: pneumonia. ``num_classes=1`` with label 0, so the pneumonia score of an anchor is the
sigmoid of its single logit (torchvision's sigmoid focal loss needs no background class).
Two configurations (``DetectorConfig``): ``resnet50`` + 256 FPN channels (the paper's RetinaNet)
and ``resnet18`` + fewer FPN channels for CPU runs. The transform's ``min_size``/``max_size`` are
set to the prepared image size, so torchvision does not resize to 800 px (3.5x slower on CPU).
Weights are never downloaded: ``weights=None, weights_backbone=None`` always; a local file can be
loaded after its sha256 is verified, with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNet, RetinaNetHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from grounding.data import storage
from grounding.config import Backbone

log = logging.getLogger(__name__)

NUM_CLASSES = 1  # pneumonia; label 0
PNEUMONIA_LABEL = 0
DETECTOR_FILE = "detector.pt"
DETECTOR_META = "detector.json"  # architecture + config, read back by extract-rois
BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")


class WeightsError(ValueError):
    """A weights file is missing, fails its checksum or does not fit the architecture."""


def build_retinanet(
    backbone: Backbone | str,
    fpn_channels: int,
    image_size: int,
    trainable_backbone_layers: int = 5,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 10,
    anchor_base: float = 32.0,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    head_groupnorm: bool = False,
    box_loss: str = "l1",
) -> RetinaNet:
    """A randomly initialised one-class RetinaNet on a ResNet FPN (P3-P7), input ``image_size``.

    Mirrors ``torchvision.models.detection.retinanet_resnet50_fpn`` (returned layers 2-4, P6/P7
    from P5) but with ``fpn_channels`` FPN/head width and trainable BatchNorm, because from random
    init a FrozenBatchNorm is an identity and deep ResNets then train poorly.

    Args:
        anchor_base: anchor size (px of the input) at P3; each level doubles it and carries the three
            octave scales 2^0, 2^(1/3), 2^(2/3) (torchvision's default is 32 for 800 px inputs; boxes of
            a 256 px image call for smaller anchors).
        aspect_ratios: anchor height/width ratios, the same on every level.
        head_groupnorm: GroupNorm in the head towers (torchvision's RetinaNet v2 head); steadier
            from random init with small batches.
        box_loss: the regression loss (torchvision's ``_box_loss`` types: ``l1``, ``smooth_l1``,
            ``giou``, ``diou``, ``ciou``); ``giou`` optimises the overlap the IoU metric scores.

    Returns:
        RetinaNet taking a list of (3, S, S) float images in [0, 1].
    """
    backbone = Backbone(backbone)
    body = getattr(resnet, backbone.value)(weights=None, norm_layer=nn.BatchNorm2d)
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_backbone_layers]
    if trainable_backbone_layers == 5:
        layers.append("bn1")
    for name, p in body.named_parameters():
        if not any(name.startswith(layer) for layer in layers):
            p.requires_grad_(False)
    stage2 = body.inplanes // 8  # 64 (basic blocks) or 256 (bottlenecks)
    returned = [2, 3, 4]
    fpn = BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in returned],
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
    )
    anchors = anchor_generator(anchor_base, aspect_ratios)
    head = RetinaNetHead(
        fpn_channels, anchors.num_anchors_per_location()[0], NUM_CLASSES,
        norm_layer=partial(nn.GroupNorm, _groups(fpn_channels)) if head_groupnorm else None,
    )
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
    head.regression_head._loss_type = box_loss  # torchvision's v2 recipe sets it the same way
    return RetinaNet(
        fpn,
        num_classes=NUM_CLASSES,
        anchor_generator=anchors,
        head=head,
        min_size=image_size,
        max_size=image_size,
        score_thresh=score_thresh,
        nms_thresh=nms_thresh,
        detections_per_img=detections_per_img,
    )


def anchor_generator(anchor_base: float, aspect_ratios: Sequence[float]) -> AnchorGenerator:
    """Anchors for the five levels P3-P7: base size ``anchor_base * 2**level`` times the octave
    scales 2^0, 2^(1/3), 2^(2/3), each with every ratio in ``aspect_ratios`` (A = 3 * len(ratios))."""
    sizes = tuple(
        tuple(float(anchor_base) * 2.0**level * 2.0 ** (k / 3.0) for k in range(3)) for level in range(5)
    )
    return AnchorGenerator(sizes, (tuple(float(r) for r in aspect_ratios),) * len(sizes))


def _groups(channels: int) -> int:
    """The most GroupNorm groups <= 32 that divide ``channels``."""
    return next(g for g in range(min(32, channels), 0, -1) if channels % g == 0)


def to_three_channels(images: torch.Tensor) -> list[torch.Tensor]:
    """(B, 1, S, S) or (B, S, S) float in [0, 1] -> list of B (3, S, S) (grey replicated)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1, S, S) or (B, 3, S, S), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return list(images.unbind(0))


def detect_keep_top(model: RetinaNet, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Eval-mode RetinaNet detections, thresholded at ``model.score_thresh`` but never empty.

    Post-processing runs with a zero score threshold, then keeps the detections at or above the
    model's threshold, or the single top one when none is (so the top-1 box of the supervised
    baseline is always defined). Below-threshold boxes never suppress higher ones in NMS and sort
    after them, so the kept set equals torchvision's own thresholded output whenever it is non-empty.
    """
    thresh = model.score_thresh
    model.score_thresh = 0.0
    try:
        dets = model(images)
    finally:
        model.score_thresh = thresh
    return [keep_top(d, thresh) for d in dets]


def keep_top(d: dict[str, torch.Tensor], score_thresh: float) -> dict[str, torch.Tensor]:
    """Detections (scores descending) at or above ``score_thresh``, at least the top one."""
    keep = d["scores"] >= score_thresh
    if len(keep) and not keep.any():
        keep[0] = True
    return {k: v[keep] for k, v in d.items()}


def sha256_file(path: str | Path) -> str:
    fs, p = storage.resolve(str(path))
    h = hashlib.sha256()
    with fs.open_input_stream(p) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str, sha256: str) -> dict[str, torch.Tensor]:
    """Verify the file's sha256, then ``torch.load(weights_only=True)``.

    Accepts a plain state_dict or a dict holding one under ``"model"`` (a training checkpoint).

    Raises:
        WeightsError: missing file, checksum mismatch (the message names the file), or no tensors.
    """
    if not storage.exists(path):
        raise WeightsError(f"{path}: weights file not found")
    if len(sha256) != 64:
        raise WeightsError(f"{path}: a 64-hex-digit sha256 is required to load weights")
    digest = sha256_file(path)
    if digest != sha256.lower():
        raise WeightsError(f"{path}: sha256 mismatch (expected {sha256.lower()}, file is {digest})")
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state_dict of tensors")
    return state


def apply_weights(model: RetinaNet, state: dict[str, torch.Tensor], strict: bool = True) -> int:
    """Load a RetinaNet state_dict, or (``strict=False``) every key whose shape fits.

    A bare torchvision ResNet state_dict (``conv1.weight``, ``layer1...``) is mapped onto
    ``backbone.body`` so an ImageNet backbone file can initialise training.

    Returns:
        Number of tensors loaded.
    """
    if "conv1.weight" in state and not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}
        strict = False
    own = model.state_dict()
    if strict:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise WeightsError(f"weights do not fit the detector architecture: {err}") from None
        return len(state)
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    log.info("loaded %d of %d weight tensors (shape-matched)", len(fitting), len(own))
    return len(fitting)


class FrozenDetector(nn.Module):
    """A RetinaNet that stays frozen inside any outer module.

    Every parameter has ``requires_grad=False`` (an outer optimizer built from
    ``outer.parameters()`` filtered by ``requires_grad`` skips it), ``train()`` is a no-op that keeps
    it in eval mode (BatchNorm running stats never move), and ``forward`` runs under
    ``torch.no_grad`` (not inference_mode: streaming training feeds
    its outputs into autograd, which refuses inference tensors).
    """

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenDetector":
        return super().train(False)

    @property
    def image_size(self) -> int:
        return int(self.model.transform.max_size)

    @property
    def feature_dim(self) -> int:
        return int(self.model.backbone.out_channels)

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """(B, 1, S, S) float [0, 1] -> torchvision detections (boxes xyxy in input px, scores, labels),
        at least one per image (``detect_keep_top``)."""
        with torch.no_grad():
            return detect_keep_top(self.model, to_three_channels(images))


def detector_meta(
    backbone: Backbone | str, fpn_channels: int, image_size: int, detector_config: dict[str, Any]
) -> dict[str, Any]:
    """What extract-rois needs to rebuild the architecture of an exported ``detector.pt``."""
    return {
        "backbone": Backbone(backbone).value,
        "fpn_channels": int(fpn_channels),
        "image_size": int(image_size),
        "num_classes": NUM_CLASSES,
        "detector_config": detector_config,
    }


def architecture(model: RetinaNet) -> dict[str, Any]:
    """The anchor and head settings of a built RetinaNet (``build_retinanet`` arguments)."""
    gen = model.anchor_generator
    return {
        "anchor_base": float(gen.sizes[0][0]),
        "aspect_ratios": [float(r) for r in gen.aspect_ratios[0]],
        "head_groupnorm": any(isinstance(m, nn.GroupNorm) for m in model.head.modules()),
    }


def export_detector(model: RetinaNet, out_dir: str, meta: dict[str, Any]) -> str:
    """Write ``detector.pt`` (state_dict), ``detector.pt.sha256`` and ``detector.json`` atomically.

    Returns:
        The sha256 of ``detector.pt``.
    """
    meta = {**meta, **architecture(model)}  # what the weights really are, whatever the config said
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    storage.makedirs(out_dir)
    storage.atomic_write_bytes(storage.join(out_dir, DETECTOR_FILE), data)
    storage.atomic_write_text(storage.join(out_dir, DETECTOR_FILE + ".sha256"), f"{digest}  {DETECTOR_FILE}\n")
    storage.atomic_write_text(
        storage.join(out_dir, DETECTOR_META), json.dumps({**meta, "sha256": digest}, indent=2) + "\n"
    )
    return digest


def _read_text(path: str) -> str:
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def load_frozen_detector(
    weights_path: str,
    sha256: str = "",
    score_thresh: float | None = None,
    nms_thresh: float | None = None,
    detections_per_img: int | None = None,
) -> FrozenDetector:
    """Rebuild an exported detector from ``detector.pt`` + ``detector.json`` next to it, frozen.

    The checksum is ``sha256`` when given, else the ``detector.pt.sha256`` file beside the weights.
    Post-processing settings default to those the detector was trained with.
    """
    base = weights_path.rsplit("/", 1)[0] if "/" in weights_path else "."
    meta_path = storage.join(base, DETECTOR_META)
    if not storage.exists(meta_path):
        raise WeightsError(f"{meta_path}: detector.json (architecture) not found next to the weights")
    meta = json.loads(_read_text(meta_path))
    if not sha256:
        sum_path = weights_path + ".sha256"
        if not storage.exists(sum_path):
            raise WeightsError(f"{sum_path}: no checksum file and no sha256 given")
        sha256 = _read_text(sum_path).split()[0]
    cfg = meta.get("detector_config", {})
    model = build_retinanet(
        meta["backbone"],
        meta["fpn_channels"],
        meta["image_size"],
        score_thresh=cfg.get("score_thresh", 0.05) if score_thresh is None else score_thresh,
        nms_thresh=cfg.get("nms_thresh", 0.5) if nms_thresh is None else nms_thresh,
        detections_per_img=cfg.get("detections_per_img", 10) if detections_per_img is None else detections_per_img,
        # detectors exported before these keys existed used torchvision's defaults
        anchor_base=meta.get("anchor_base", 32.0),
        aspect_ratios=tuple(meta.get("aspect_ratios", (0.5, 1.0, 2.0))),
        head_groupnorm=meta.get("head_groupnorm", False),
    )
    apply_weights(model, load_state_dict(weights_path, sha256), strict=True)
    return FrozenDetector(model)
