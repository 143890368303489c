"""Training and evaluation loops: plain torch over an iterable of :class:`RoiBatch`.

No Ray here (``grounding.distributed.train`` is the glue). Under ``torch.distributed`` the per-step
"is this step usable" flag is all-reduced so every rank skips the same steps: a rank that skipped
``backward`` alone would leave the others waiting in DDP's gradient all-reduce forever.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from grounding.model.batching import RoiBatch
from grounding.config import NegativeRois
from grounding.model.losses import output_loss

# Metric names (flat snake_case, used by the loop, ray.train.report, TensorBoard and Tune).
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"
TRAIN_TRIPLET = "train_triplet"
TRAIN_BCE = "train_bce"
VAL_LOSS = "val_loss"
VAL_TRIPLET = "val_triplet"
VAL_BCE = "val_bce"
VAL_AUC = "val_attribute_auc"
EPOCH_SECONDS = "epoch_seconds"
SKIPPED_STEPS = "skipped_steps"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive NaN/Inf losses; names the (pseudonymous) image ids of the last batch."""

    def __init__(self, count: int, image_ids: Sequence[str]) -> None:
        self.count = count
        self.image_ids = list(image_ids)
        shown = ", ".join(self.image_ids[:16]) + (" ..." if len(self.image_ids) > 16 else "")
        super().__init__(
            f"{count} consecutive non-finite losses; last batch image ids: [{shown}]. "
            "Check these ROI rows, or lower optim.lr / keep optim.grad_clip > 0."
        )


@dataclass
class EpochStats:
    loss: float = float("nan")
    triplet: float = float("nan")
    bce: float = float("nan")
    steps: int = 0
    samples: int = 0
    skipped_nonfinite: int = 0
    skipped_empty: int = 0
    seconds: float = 0.0
    first_step_time: float = 0.0  # wall clock (time.time) after the first optimizer step, for benchmarks


@dataclass
class EvalStats:
    loss: float = float("nan")
    triplet: float = float("nan")
    bce: float = float("nan")
    auc: float = float("nan")
    samples: int = 0
    probabilities: Optional[np.ndarray] = field(default=None, repr=False)  # (N, 22)
    targets: Optional[np.ndarray] = field(default=None, repr=False)


def _with_negatives(batch: RoiBatch, negative_rois: NegativeRois) -> RoiBatch:
    if NegativeRois(negative_rois) is NegativeRois.OTHER_STUDY:
        return batch.with_other_study_negatives()
    return batch


def _all_ranks_ok(ok: bool, device: torch.device) -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0.5)
    return ok


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Optional[RoiBatch]],
    beta: float,
    use_classification: bool,
    bce_weight: float,
    grad_clip: float = 0.0,
    max_consecutive_nonfinite: int = 3,
    device: torch.device | str = "cpu",
    negative_rois: NegativeRois = NegativeRois.LOWEST_SCORED,
    alpha_distill: float = 0.0,
    alpha_distill_temperature: float = 9.0,
) -> EpochStats:
    """One pass over ``batches``; a non-finite loss skips the step (counted).

    Args:
        model: a :class:`GroundingModel` (possibly DDP-wrapped).
        optimizer: over the model's trainable parameters.
        batches: RoiBatches; ``None`` items (all rows invalid) are skipped on every rank.
        beta, use_classification, bce_weight: loss settings (``grounding.model.losses``).
        grad_clip: max gradient norm (0 = off).
        max_consecutive_nonfinite: raise :class:`NonFiniteLossError` after this many in a row.
        device: where tensors go.
        negative_rois: which ROIs play I_n (``RoiBatch.with_other_study_negatives``).
        alpha_distill, alpha_distill_temperature: the extension term of ``grounding.model.losses`` (0 = off).

    Returns:
        :class:`EpochStats` with sample-weighted mean losses over the steps taken.
    """
    device = torch.device(device)
    model.train()
    stats = EpochStats()
    sums = np.zeros(3)
    consecutive = 0
    start = time.perf_counter()
    for batch in batches:
        parts = None
        if batch is not None and len(batch):
            batch = _with_negatives(batch.to(device), negative_rois)
            out = model(**batch.model_inputs())
            parts = output_loss(out, batch.targets, beta, use_classification, bce_weight,
                                alpha_distill, alpha_distill_temperature)
        finite = parts is not None and bool(torch.isfinite(parts.total).item())
        if not _all_ranks_ok(finite, device):
            optimizer.zero_grad(set_to_none=True)
            if parts is None and batch is None:
                stats.skipped_empty += 1
                continue
            stats.skipped_nonfinite += 1
            consecutive += 1
            if consecutive >= max_consecutive_nonfinite:
                raise NonFiniteLossError(consecutive, batch.image_ids if batch is not None else [])
            continue
        consecutive = 0
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        n = len(batch)
        sums += n * np.array([parts.total.item(), parts.triplet.item(), parts.bce.item()])
        stats.samples += n
        stats.steps += 1
        if stats.steps == 1:
            stats.first_step_time = time.time()
    if stats.samples:
        stats.loss, stats.triplet, stats.bce = (sums / stats.samples).tolist()
    stats.seconds = time.perf_counter() - start
    return stats


def attribute_auc(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Macro ROC AUC over the attributes that have both classes in ``targets`` (NaN if none)."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for j in range(targets.shape[1]):
        col = targets[:, j]
        if 0 < col.sum() < len(col):
            aucs.append(roc_auc_score(col, probabilities[:, j]))
    return float(np.mean(aucs)) if aucs else float("nan")


def attribute_auc_torch(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:func:`attribute_auc` on the tensors' device (no host copy of the validation outputs).

    Mann-Whitney form with tie-averaged ranks, which is what ``roc_auc_score`` computes. Returns a
    0-d float64 tensor (NaN when no attribute has both classes).
    """
    p, t = probabilities.double(), targets.double()
    n = p.shape[0]
    aucs = []
    for j in range(p.shape[1]):
        values, order = torch.sort(p[:, j])
        _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
        last = torch.cumsum(counts, 0).double()  # 1-based rank of each tie group's last member
        ranks = torch.empty(n, dtype=torch.float64, device=p.device)
        ranks[order] = (last - (counts.double() - 1.0) / 2.0)[inverse]
        pos = t[:, j].sum()
        neg = n - pos
        aucs.append((ranks @ t[:, j] - pos * (pos + 1.0) / 2.0) / (pos * neg))
    auc = torch.stack(aucs)
    both = (t.sum(0) > 0) & (t.sum(0) < n)
    return auc[both].mean() if n else torch.tensor(float("nan"), dtype=torch.float64)


@torch.no_grad()
def evaluate_epoch(
    model: torch.nn.Module,
    batches: Iterable[Optional[RoiBatch]],
    beta: float,
    use_classification: bool,
    bce_weight: float,
    device: torch.device | str = "cpu",
    negative_rois: NegativeRois = NegativeRois.LOWEST_SCORED,
    alpha_distill: float = 0.0,
    alpha_distill_temperature: float = 9.0,
) -> EvalStats:
    """Validation: mean losses (non-finite batches excluded) and macro AUC of the attribute probabilities.

    Everything stays on ``device`` until one read-back at the end (a per-batch ``.item()`` or host
    copy would wait for the device every batch). ``probabilities``/``targets`` are left ``None``.
    """
    device = torch.device(device)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    n_loss = torch.zeros((), dtype=torch.float64, device=device)
    probs, targets = [], []
    for batch in batches:
        if batch is None or not len(batch):
            continue
        batch = _with_negatives(batch.to(device), negative_rois)
        out = model(**batch.model_inputs())
        parts = output_loss(out, batch.targets, beta, use_classification, bce_weight,
                            alpha_distill, alpha_distill_temperature)
        probs.append(out.probabilities.float())
        targets.append(batch.targets.float())
        ok = torch.isfinite(parts.total).double()  # a non-finite batch adds 0 * its (finite-masked) loss
        row = torch.stack([parts.total, parts.triplet, parts.bce]).double()
        sums += len(batch) * ok * torch.nan_to_num(row, nan=0.0, posinf=0.0, neginf=0.0)
        n_loss += len(batch) * ok
    stats = EvalStats()
    if probs:
        p, t = torch.cat(probs), torch.cat(targets)
        stats.samples = int(t.shape[0])
        stats.auc = float(attribute_auc_torch(p, t).item())
    n = float(n_loss.item())
    if n:
        stats.loss, stats.triplet, stats.bce = (sums / n).tolist()
    return stats


def should_stop(val_losses: Sequence[float], patience: int, min_rel_change: float) -> bool:
    """Early stopping (paper: stop when the validation loss changed < 0.1 % over 10 epochs).

    Stops when the best loss of the last ``patience`` epochs improves on the best loss before them
    by less than ``min_rel_change`` relative. A rising loss therefore stops too. Never stops before
    ``patience + 1`` epochs; non-finite losses count as no improvement.
    """
    vals = [v if math.isfinite(v) else math.inf for v in val_losses]
    if len(vals) <= patience:
        return False
    before = min(vals[:-patience])
    recent = min(vals[-patience:])
    if not math.isfinite(before):
        return not math.isfinite(recent)
    return (before - recent) < min_rel_change * max(abs(before), 1e-12)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch, numpy and ``random`` from (seed, epoch, rank) at the start of an epoch.

    A run resumed from a checkpoint then draws the same dropout masks as an unbroken run, on any rank:
    nothing about the RNG has to survive in the checkpoint, whatever the world size.
    """
    import random

    value = (seed * 1_000_003 + epoch * 1009 + rank) % 2**32
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def epoch_metrics(epoch: int, train: EpochStats, val: EvalStats) -> dict[str, float]:
    """The flat per-epoch metrics dict (see the constants above)."""
    return {
        EPOCH: epoch, TRAIN_LOSS: train.loss, TRAIN_TRIPLET: train.triplet, TRAIN_BCE: train.bce,
        VAL_LOSS: val.loss, VAL_TRIPLET: val.triplet, VAL_BCE: val.bce, VAL_AUC: val.auc,
        EPOCH_SECONDS: train.seconds, SKIPPED_STEPS: train.skipped_nonfinite + train.skipped_empty,
    }


def progress_line(m: dict) -> str:
    """One human line per epoch."""
    return (
        f"epoch {m[EPOCH]:>3d}  train {m[TRAIN_LOSS]:.4f} (triplet {m[TRAIN_TRIPLET]:.4f}, bce {m[TRAIN_BCE]:.4f})"
        f"  val {m[VAL_LOSS]:.4f}  val_auc {m[VAL_AUC]:.3f}  {m[EPOCH_SECONDS]:.1f} s/epoch"
        + (f"  skipped {m[SKIPPED_STEPS]}" if m.get(SKIPPED_STEPS) else "")
    )


__all__ = [
    "EpochStats", "EvalStats", "NonFiniteLossError", "attribute_auc", "attribute_auc_torch", "epoch_metrics",
    "evaluate_epoch",
    "progress_line", "should_stop", "train_one_epoch",
]
