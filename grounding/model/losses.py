"""Losses of design.md 1.4 as pure functions: triplet with explicit negatives, attribute BCE.

Reports without attributes (negative studies): there is no text to ground, so both triplet terms
are masked out for that study; the BCE still applies (the target is all zeros, which teaches the
classifier "no attribute"). A batch with no attribute-bearing study has a triplet loss of 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grounding.model.attention import masked_softmax


@dataclass
class LossParts:
    """total = triplet + bce_weight * bce (bce term 0 when classification is off); scalars."""

    total: torch.Tensor
    triplet: torch.Tensor
    bce: torch.Tensor


def triplet_terms(
    s_roi: torch.Tensor,
    s_roi_neg: torch.Tensor,
    s_text: torch.Tensor,
    s_text_neg: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-study L_trip = max(beta - S_roi(I,T) + S_roi(I_n,T), 0) + max(beta - S_text(I,T) + S_text(I,T_n), 0).

    Args:
        s_roi, s_roi_neg, s_text, s_text_neg: (B,) similarities.
        beta: margin (paper 0.8).

    Returns:
        (B,) per-study loss.
    """
    return F.relu(beta - s_roi + s_roi_neg) + F.relu(beta - s_text + s_text_neg)


def triplet_loss(
    s_roi: torch.Tensor,
    s_roi_neg: torch.Tensor,
    s_text: torch.Tensor,
    s_text_neg: torch.Tensor,
    has_text: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Mean of :func:`triplet_terms` over studies that have at least one attribute (0 if none)."""
    per_study = triplet_terms(s_roi, s_roi_neg, s_text, s_text_neg, beta)
    w = has_text.to(per_study.dtype)
    # Sum/clamp rather than boolean indexing: keeps the graph (and DDP's used-parameter set) the
    # same whether or not the batch has text.
    return (per_study * w).sum() / w.sum().clamp_min(1.0)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of (B, 22) logits against (B, 22) multi-hot targets."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def alpha_distillation(
    alpha: torch.Tensor,
    r_roi: torch.Tensor,
    candidates: torch.Tensor,
    has_text: torch.Tensor,
    temperature: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Extension: mean over studies with text of KL(q || alpha), q = softmax_i(temperature * R_roi_i).

    q is what the report says about the ROIs (R_roi with the study's own words) and is detached: only
    alpha, which sees the image alone, learns from it. Both are distributions over ``candidates``.

    Args:
        alpha: (B, K) ROI attention (0 outside the candidates).
        r_roi: (B, K) R_roi_i with the study's own report.
        candidates: (B, K) bool, the ROIs alpha may attend to.
        has_text: (B,) bool, studies with at least one attribute (others contribute 0).
        temperature: sharpness of q.

    Returns:
        Scalar loss (0 when no study has text).
    """
    q = masked_softmax(temperature * r_roi.detach(), candidates.bool(), dim=1)
    log_ratio = torch.log(q.clamp_min(eps)) - torch.log(alpha.clamp_min(eps))
    per_study = (q * log_ratio).sum(1)
    w = has_text.to(per_study.dtype)
    return (per_study * w).sum() / w.sum().clamp_min(1.0)


def grounding_loss(
    s_roi: torch.Tensor,
    s_roi_neg: torch.Tensor,
    s_text: torch.Tensor,
    s_text_neg: torch.Tensor,
    has_text: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    use_classification: bool,
    bce_weight: float,
    distill: torch.Tensor | None = None,
) -> LossParts:
    """L = L_trip + bce_weight * L_BCE (+ an extension's weighted ``distill`` term, if given).

    The "without classification" ablation drops the BCE term: it is still computed (and reported) when
    ``use_classification`` is False, but detached so it does not train anything.
    """
    trip = triplet_loss(s_roi, s_roi_neg, s_text, s_text_neg, has_text, beta)
    if distill is not None:
        trip = trip + distill
    bce = bce_loss(logits, targets)
    if use_classification:
        total = trip + bce_weight * bce
    else:
        total = trip + 0.0 * bce  # keep the classifier in the graph (DDP) without training it
        bce = bce.detach()
    return LossParts(total=total, triplet=trip, bce=bce)


def output_loss(output, targets: torch.Tensor, beta: float, use_classification: bool, bce_weight: float,
                alpha_distill: float = 0.0, alpha_distill_temperature: float = 9.0) -> LossParts:
    """:func:`grounding_loss` on a :class:`grounding.model.grounding_model.GroundingOutput` with text and negatives.

    ``alpha_distill`` > 0 adds that weight times :func:`alpha_distillation` (an extension; 0 = the paper).
    """
    if output.s_roi is None or output.s_roi_neg is None:
        raise ValueError("the output has no similarities: call the model with attributes and negative ROIs")
    distill = None
    if alpha_distill > 0:
        distill = alpha_distill * alpha_distillation(output.alpha, output.r_roi, output.candidates, output.has_text,
                                                     alpha_distill_temperature)
    return grounding_loss(
        output.s_roi, output.s_roi_neg, output.s_text, output.s_text_neg, output.has_text,
        output.logits, targets, beta, use_classification, bce_weight, distill,
    )


__all__ = ["LossParts", "alpha_distillation", "bce_loss", "grounding_loss", "output_loss", "triplet_loss", "triplet_terms"]
