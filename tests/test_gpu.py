"""CUDA checks: the same math on the GPU as on the CPU, and detector training on the GPU.

Run on a CUDA machine with ``pytest -m gpu tests/test_gpu.py``; without CUDA every test skips.
Ray-free on purpose: the GPU machine has torch, torchvision, pyarrow, numpy, scikit-learn, pyyaml and
pydicom but not Ray, gensim or the pylibjpeg plugins, so only Ray-free grounding modules are imported.

Each test is a ``_compare_*(device_a, device_b)`` / ``_train_*(device)`` helper that is
device-agnostic (so the assertions can be sanity-checked with ``("cpu", "cpu")`` on a CPU box),
called from the test with ``("cpu", "cuda")``.

Tolerances: TF32 is switched off for every test (``no_tf32``) so CUDA runs full fp32 convolutions
and matmuls; what is left is fp32 reduction-order noise (~1e-6 relative per layer, a few layers
deep), hence the ``1e-3``-relative feature tolerance. Anchor rankings are compared only where they
are unambiguous (the reference's neighbouring scores differ by more than ``TIE_RTOL``), because
top-k over near-equal scores may legitimately pick a different order on another device.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from grounding.detection import detector as det
from grounding.detection import engine as deng
from grounding.model import engine
from grounding.model.batching import iter_table_batches, select_rows
from grounding.bench.rois import blob_image, blob_prepared_table
from grounding.bench.train import synthetic_roi_table, synthetic_vectors
from grounding.model.checkpoint import export_model
from grounding.config import GroundingConfig, ModelConfig
from grounding.model.grounding_model import build_model
from grounding.model.predict import Predictor
from grounding.data.prepared import bytes_to_pixels
from grounding.detection.rois import extract_rois
from grounding.text.vocabulary import ATTRIBUTES, VOCABULARY_VERSION

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]

SIZE = 128  # detector input px
FPN = 32
NUM_ROIS = 16
TIE_RTOL = 1e-4  # neighbouring scores closer than this (relative) may swap order across devices
FEAT_RTOL = 1e-3  # fp32 reduction-order noise through ResNet18 + FPN + 4 head convs, TF32 off


@pytest.fixture(autouse=True)
def no_tf32():
    """Full fp32 on CUDA (cuDNN convolutions default to TF32, ~1e-3 relative error per conv)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- helpers ----------------------------------------------------------------------------------
def _spread_head(model: nn.Module) -> None:
    """Kaiming-init the head convs: torchvision's std=0.01 head init makes every anchor score
    exactly sigmoid(prior) = 0.01 at random init, so top-k order would be all ties."""
    for m in model.head.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


def _detector(seed: int = 0, size: int = SIZE, fpn: int = FPN, **kw) -> nn.Module:
    torch.manual_seed(seed)  # the conftest guard restores the global RNG after each test
    model = det.build_retinanet("resnet18", fpn, size, detections_per_img=5, **kw)
    _spread_head(model)
    return model


def _blob_images(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) float [0, 1] blob images (bright ellipses on noise)."""
    table = blob_prepared_table(n, image_size=size, seed=seed, positive_fraction=1.0)
    pixels = [bytes_to_pixels(p, size) for p in table.column("pixels").to_pylist()]
    return torch.from_numpy(np.stack(pixels)).float().div(255.0)[:, None]


def _unambiguous(scores: np.ndarray) -> np.ndarray:
    """(B, N + 1) sorted scores -> (B, N) bool: positions whose score differs from both neighbours
    (the (N+1)-th included) by more than ``TIE_RTOL`` relative, so their rank is device-independent."""
    tol = TIE_RTOL * np.abs(scores) + 1e-9
    gap_prev = np.full(scores.shape, np.inf)
    gap_prev[:, 1:] = np.abs(np.diff(scores, axis=1))
    gap_next = np.full(scores.shape, np.inf)
    gap_next[:, :-1] = np.abs(np.diff(scores, axis=1))
    return ((gap_prev > tol) & (gap_next > tol))[:, :-1]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, what: str) -> None:
    """|a - b| <= rtol * max|a| (+ tiny), a scale-aware check for activations of any magnitude."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    bound = rtol * max(a.abs().max().item() if a.numel() else 0.0, 1e-6)
    assert err <= bound, f"{what}: max abs difference {err:.3g} > {bound:.3g}"


def _device_of(module: nn.Module) -> str:
    return next(module.parameters()).device.type


# -- 1. ROI extraction ------------------------------------------------------------------------
def _compare_rois(device_a: str, device_b: str) -> None:
    """The same frozen detector on two devices gives the same ROIs for the same blob images."""
    base = _detector()
    det_a = det.FrozenDetector(copy.deepcopy(base)).to(device_a)
    det_b = det.FrozenDetector(copy.deepcopy(base)).to(device_b)
    images = _blob_images(3)
    sizes = [(512, 480)] * 3
    # N + 1 ROIs, so the rank of the N-th is checked against the one just outside the top N
    ra = extract_rois(det_a, images.to(device_a), NUM_ROIS + 1, sizes)
    rb = extract_rois(det_b, images.to(device_b), NUM_ROIS + 1, sizes)
    assert rb.features.device.type == torch.device(device_b).type == _device_of(det_b)
    assert rb.scores.device.type == rb.boxes.device.type == torch.device(device_b).type
    assert rb.features.shape == ra.features.shape == (3, NUM_ROIS + 1, FPN)
    n = NUM_ROIS

    # sorted scores agree whatever the tie order (sigmoid outputs: abs 1e-6 + 1e-4 relative)
    np.testing.assert_allclose(rb.scores.cpu().numpy(), ra.scores.cpu().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(rb.neg_scores.cpu().numpy(), ra.neg_scores.cpu().numpy(), rtol=1e-4, atol=1e-7)

    for kind in ("pos", "neg"):
        pre = "" if kind == "pos" else "neg_"
        sa = getattr(ra, pre + "scores").cpu().numpy()
        ok = _unambiguous(sa)
        # the setup (spread head, blob images) must leave most ranks well defined or the test is empty
        assert ok.mean() >= 0.5, f"{kind}: only {ok.mean():.0%} of ROI ranks are unambiguous; reseed the test"
        fa, fb = getattr(ra, pre + "features")[:, :n], getattr(rb, pre + "features")[:, :n]
        ba, bb = getattr(ra, pre + "boxes")[:, :n], getattr(rb, pre + "boxes")[:, :n]
        mask = torch.from_numpy(ok)
        _close(fa.cpu()[mask], fb.cpu()[mask], FEAT_RTOL, f"{kind} ROI features")
        # normalised [0, 1] boxes: 1e-4 is 0.05 px of a 512 px image
        np.testing.assert_allclose(bb.cpu()[mask].numpy(), ba.cpu()[mask].numpy(), atol=1e-4)
        if kind == "pos":
            ia, ib = ra.anchor_index[:, :n].cpu()[mask], rb.anchor_index[:, :n].cpu()[mask]
            assert torch.equal(ia, ib), "positive ROIs with well separated scores must be the same anchors"

    # the detector's top-1 box (original px) and score: position 0 must be unambiguous
    assert _unambiguous(ra.scores.cpu().numpy())[:, 0].all()
    for da, db in zip(ra.detections, rb.detections):
        np.testing.assert_allclose(db["boxes"][0].cpu().numpy(), da["boxes"][0].cpu().numpy(), atol=0.05)
        np.testing.assert_allclose(db["scores"][0].item(), da["scores"][0].item(), rtol=1e-4, atol=1e-6)


def test_roi_extraction_cuda_matches_cpu():
    _compare_rois("cpu", "cuda")


# -- 2. grounding model training --------------------------------------------------------------
def _train_grounding(device: str, epochs: int = 3) -> tuple[list[float], nn.Module]:
    table = select_rows(synthetic_roi_table(n=128, num_rois=6, feature_dim=12, seed=0), "train")
    v = synthetic_vectors(8)
    torch.manual_seed(0)
    # dropout 0: CPU and CUDA draw different dropout masks from the same seed
    model = build_model(12, v.vectors, v.negative_vectors, ModelConfig(dropout=0.0)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    losses = []
    for _ in range(epochs):
        stats = engine.train_one_epoch(model, opt, iter_table_batches(table, 16), beta=0.8,
                                       use_classification=True, bce_weight=1.0, grad_clip=2.0, device=device)
        assert stats.steps >= 4 and stats.skipped_nonfinite == 0
        losses.append(stats.loss)
    return losses, model


def _compare_grounding_training(device_a: str, device_b: str) -> None:
    la, ma = _train_grounding(device_a)
    lb, mb = _train_grounding(device_b)
    assert _device_of(mb) == torch.device(device_b).type
    assert all(math.isfinite(x) for x in la + lb)
    # ~20 Adam steps: fp32 noise in the gradients moves the weights by far less than 1e-3 relative
    np.testing.assert_allclose(lb, la, rtol=1e-3, atol=1e-5)
    assert lb[-1] < lb[0], f"training on {device_b} did not lower the loss: {lb}"
    # whole-model relative distance: Adam may move a parameter whose gradient is pure fp32 noise by up
    # to lr per step on one device only, so no per-element bound; 1e-3 of the weights' norm is plenty
    wa = torch.cat([p.detach().cpu().flatten() for p in ma.parameters()])
    wb = torch.cat([p.detach().cpu().flatten() for p in mb.parameters()])
    assert (wa - wb).norm() <= 1e-3 * wa.norm(), f"weights differ by {(wa - wb).norm() / wa.norm():.3g} relative"


def test_grounding_training_cuda_matches_cpu():
    _compare_grounding_training("cpu", "cuda")


# -- 3. Predictor ------------------------------------------------------------------------------
PRED_DET_SIZE = 64
PRED_PREP_SIZE = 80  # differs from the detector input: exercises the resize path
PRED_ROIS = 8


def _export(tmp) -> tuple[str, str]:
    """A random (spread-head) detector + grounding model exported as predict expects them
    (the same recipe as tests/test_predict.py)."""
    detector = _detector(seed=0, size=PRED_DET_SIZE, fpn=16)
    det_dir = tmp / "detector"
    meta = det.detector_meta("resnet18", 16, PRED_DET_SIZE, GroundingConfig().to_dict()["detector"])
    digest = det.export_detector(detector, str(det_dir), meta)
    det_path = str(det_dir / "detector.pt")
    cfg = GroundingConfig().with_overrides({
        "data.image_size": PRED_PREP_SIZE, "detector.num_rois": PRED_ROIS, "detector.fpn_channels": 16,
        "model.roi_hidden": 8, "model.classifier_hidden": [8],
        "detector.weights_path": det_path, "detector.weights_sha256": digest,
    })
    v = synthetic_vectors(8)
    torch.manual_seed(1)
    model = build_model(16, v.vectors, v.negative_vectors, cfg.model)
    out = tmp / "model"
    export_model(out, model_state=model.state_dict(), config=cfg.to_dict(), config_yaml=cfg.to_yaml(),
                 vocabulary=ATTRIBUTES, vocabulary_version=VOCABULARY_VERSION, epoch=0)
    return str(out / "model.pt"), det_path


def _compare_predictor(device_a: str, device_b: str, tmp) -> None:
    model_path, det_path = _export(tmp)
    pa_ = Predictor(model_path, det_path, device=device_a, top_k=3)
    pb_ = Predictor(model_path, det_path, device=device_b, top_k=3)
    assert _device_of(pb_.detector) == _device_of(pb_.model) == torch.device(device_b).type
    pixels, _ = blob_image(np.random.default_rng(0), 96, 2)
    image = np.repeat(pixels, 2, axis=1)  # H=96, W=192: boxes scale differently on the two axes

    # precondition on the reference: the top-N ROI set (N-th vs (N+1)-th score) and the alpha ranking
    # are unambiguous; the model's output does not depend on the order of the ROIs inside the set
    prepared, size = pa_._prepare(image)
    rois = extract_rois(pa_.detector, pa_._detector_input([prepared]), PRED_ROIS + 1, [size])
    assert _unambiguous(rois.scores.cpu().numpy())[:, -1].all(), "reference top-N ROI set has a near-tie; reseed"
    alpha = pa_.model(rois.features[:, :PRED_ROIS], rois.boxes[:, :PRED_ROIS], rois.scores[:, :PRED_ROIS],
                      torch.ones(1, PRED_ROIS, dtype=torch.bool, device=rois.scores.device)).alpha
    alpha_sorted = alpha.sort(dim=1, descending=True).values.detach().cpu().numpy()
    assert _unambiguous(np.concatenate([alpha_sorted, [[-1.0]]], axis=1)).all(), "alpha near-ties; reseed"

    [ra], [rb] = pa_.predict_arrays([image]), pb_.predict_arrays([image])
    assert (rb["width"], rb["height"]) == (ra["width"], ra["height"]) == (192, 96)
    assert list(rb["attributes"]) == list(ATTRIBUTES)
    # results are rounded: boxes to 0.01 px, probabilities/scores to 1e-6
    np.testing.assert_allclose(list(rb["attributes"].values()), list(ra["attributes"].values()), atol=2e-5)
    assert len(rb["boxes"]) == len(ra["boxes"]) >= 1
    np.testing.assert_allclose(np.asarray(rb["boxes"]), np.asarray(ra["boxes"]), atol=0.05)
    np.testing.assert_allclose(rb["scores"], ra["scores"], atol=2e-5)
    np.testing.assert_allclose(np.asarray(rb["detector_boxes"])[:1], np.asarray(ra["detector_boxes"])[:1], atol=0.05)
    np.testing.assert_allclose(rb["detector_scores"][:1], ra["detector_scores"][:1], rtol=1e-4, atol=2e-6)


def test_predictor_cuda_matches_cpu(tmp_path):
    _compare_predictor("cpu", "cuda", tmp_path)


# -- 4. detector training on the device -------------------------------------------------------
def _train_detector(device: str, steps: int = 6) -> None:
    """A few AdamW steps on one batch of blob images lower the RetinaNet loss on ``device``; a
    FrozenDetector inside a trained outer module keeps its weights and BN stats on ``device``."""
    torch.manual_seed(0)
    model = det.build_retinanet("resnet18", FPN, SIZE, head_groupnorm=True).to(device)
    table = deng.detector_rows(blob_prepared_table(8, image_size=SIZE, seed=2, positive_fraction=1.0))
    batch = deng.samples_from_table(table)[:4]
    assert len(batch) == 4 and all(len(s.boxes) for s in batch)
    opt = deng.make_optimizer(model.parameters(), "adamw", 1e-3, 0.0)
    probe = model.head.classification_head.cls_logits.weight
    before = probe.detach().clone()
    losses = [deng.train_one_epoch(model, opt, [batch], device=device, grad_clip=10.0)["loss"]
              for _ in range(steps)]
    assert probe.device.type == torch.device(device).type
    assert all(math.isfinite(x) for x in losses)
    assert not torch.equal(probe.detach(), before)
    assert losses[-1] < 0.9 * losses[0], f"detector loss did not fall on {device}: {losses}"

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detector = det.FrozenDetector(model)
            self.head = nn.Linear(FPN, 1)

    model.zero_grad(set_to_none=True)  # drop the training grads: the outer steps must not make new ones
    outer = Outer().to(device)
    outer.train()
    assert outer.head.training and not any(m.training for m in outer.detector.modules())
    assert not any(p.requires_grad for p in outer.detector.parameters())
    frozen_state = {k: v.detach().clone() for k, v in outer.detector.state_dict().items()}
    outer_opt = deng.make_optimizer(outer.parameters(), "adamw", 1e-2, 0.0)
    assert sum(p.numel() for g in outer_opt.param_groups for p in g["params"]) == FPN + 1
    head_before = outer.head.weight.detach().clone()
    for _ in range(2):
        rois = extract_rois(outer.detector, deng.stack_images(batch, device), 8)
        assert rois.features.device.type == torch.device(device).type and not rois.features.requires_grad
        loss = outer.head(rois.features).pow(2).mean()
        outer_opt.zero_grad()
        loss.backward()
        outer_opt.step()
    assert not torch.equal(outer.head.weight.detach(), head_before)
    assert all(p.grad is None for p in outer.detector.parameters())
    for k, v in outer.detector.state_dict().items():  # weights and BatchNorm running stats
        assert torch.equal(v, frozen_state[k]), f"frozen detector tensor {k} changed"


def test_detector_training_on_cuda():
    _train_detector("cuda")
