"""SCAN-style cross-attention between ROIs and report attributes, as pure functions.

The equations are design.md 1.4 (Bhalodia et al. 2021), with the similarity normalisation of SCAN
(Lee et al. 2018, ``kuanghuei/SCAN: model.py: func_attention``). Shapes use
B = studies, K = ROIs per image (padded), M = attributes per report (padded), d = word dimension.

Normalisation axis (decided here, following SCAN): SCAN normalises the raw similarity *across the
query axis for each context element*, then takes the softmax over the context axis. Each of our two
softmaxes has its own context axis, so each gets its own normalised copy of ``s``:

* ``a_ij`` = softmax over attributes j (context = attributes, query = ROIs):
  ``s`` is normalised across ROIs i for each attribute j  (``dim=1`` of ``(B, K, M)``);
* ``b_ij`` = softmax over ROIs i (context = ROIs, query = attributes):
  ``s`` is normalised across attributes j for each ROI i  (``dim=2``).

Padded ROIs/attributes are zeroed before the normalisation and get zero attention weight. A study
with no attributes gets ``a = b = 0``, ``A = B = 0`` and similarities of 0 (callers mask it out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grounding.config import SimilarityNorm, SRoiPooling

EPS = 1e-8


def l2norm(x: torch.Tensor, dim: int, eps: float = EPS) -> torch.Tensor:
    """``x / ||x||_2`` along ``dim``; all-zero vectors stay zero (no NaN)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)


def cosine_matrix(phi: torch.Tensor, m: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """s_ij = cos(phi_i, m_j).

    Args:
        phi: (B, K, d) ROI embeddings.
        m: (B, M, d) attribute word vectors.

    Returns:
        (B, K, M) cosine similarities.
    """
    return torch.bmm(l2norm(phi, -1, eps), l2norm(m, -1, eps).transpose(1, 2))


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over ``dim`` where ``mask`` is False gets weight 0; an all-masked slice is all 0."""
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    # Multiplying by the mask (rather than using -inf) keeps all-masked slices at 0 and their
    # gradients finite.
    return torch.softmax(x, dim=dim) * mask


def normalise_similarity(
    s: torch.Tensor, pair_mask: torch.Tensor, norm: SimilarityNorm, dim: int, eps: float = EPS
) -> torch.Tensor:
    """SCAN ``raw_feature_norm`` applied across ``dim`` (the query axis).

    Args:
        s: (B, K, M) raw cosine similarities.
        pair_mask: (B, K, M) bool, True where both the ROI and the attribute are real.
        norm: ``clipped_l2norm`` (LeakyReLU(0.1) then l2-normalise), ``softmax`` (masked softmax)
            or ``none``.
        dim: the axis normalised across (1 = ROIs, 2 = attributes).

    Returns:
        (B, K, M) normalised similarities, 0 at padded pairs.
    """
    norm = SimilarityNorm(norm)
    s = s * pair_mask
    if norm is SimilarityNorm.CLIPPED_L2NORM:
        return l2norm(F.leaky_relu(s, 0.1), dim, eps) * pair_mask
    if norm is SimilarityNorm.SOFTMAX:
        return masked_softmax(s, pair_mask, dim)
    if norm is SimilarityNorm.NONE:
        return s
    raise ValueError(f"unknown similarity norm {norm!r}")  # pragma: no cover - enum guards it


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` counting only ``mask`` entries (0 where none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


@dataclass
class CrossAttention:
    """Every intermediate of design.md 1.4, for tests and attention maps.

    Attributes:
        s: (B, K, M) raw cosine similarity s_ij.
        a: (B, K, M) a_ij, softmax over attributes j of lambda_a * norm(s).
        b: (B, K, M) b_ij, softmax over ROIs i of lambda_b * norm(s).
        attended_image: (B, M, d) A_j = sum_i alpha_i phi_i a_ij.
        attended_text: (B, K, d) B_i = sum_j m_j b_ij.
        r_text: (B, M) R_text_j = cos(A_j, m_j).
        r_roi: (B, K) R_roi_i = cos(B_i, phi_i).
        s_roi: (B,) S_roi = masked mean_i R_roi_i.
        s_text: (B,) S_text = masked mean_j R_text_j.
    """

    s: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    attended_image: torch.Tensor
    attended_text: torch.Tensor
    r_text: torch.Tensor
    r_roi: torch.Tensor
    s_roi: torch.Tensor
    s_text: torch.Tensor


def cross_attention(
    phi: torch.Tensor,
    alpha: torch.Tensor,
    roi_mask: torch.Tensor,
    m: torch.Tensor,
    attr_mask: torch.Tensor,
    norm: SimilarityNorm,
    lambda_a: float,
    lambda_b: float,
    eps: float = EPS,
    s_roi_pooling: SRoiPooling = SRoiPooling.MEAN,
) -> CrossAttention:
    """Cross-attention of design.md 1.4, batched with padding masks (no per-study loop).

    Args:
        phi: (B, K, d) ROI embeddings phi_i.
        alpha: (B, K) ROI attention alpha_i (0 at padded ROIs).
        roi_mask: (B, K) bool, real ROIs.
        m: (B, M, d) attribute vectors m_j (positives or the negative words' vectors).
        attr_mask: (B, M) bool, real attributes (a row of False = a report without attributes).
        norm: SCAN similarity normalisation.
        lambda_a: softmax temperature over attributes.
        lambda_b: softmax temperature over ROIs.
        s_roi_pooling: ``mean`` (the paper: S_roi = mean_i R_roi_i, where alpha does not appear) or the
            extension ``alpha`` (S_roi = sum_i alpha_i R_roi_i, so the ROI-side triplet term trains alpha).

    Returns:
        :class:`CrossAttention` with every intermediate.
    """
    roi_mask = roi_mask.bool()
    attr_mask = attr_mask.bool()
    pair = roi_mask[:, :, None] & attr_mask[:, None, :]  # (B, K, M)
    s = cosine_matrix(phi, m, eps)  # (B, K, M)
    s_for_a = normalise_similarity(s, pair, norm, dim=1, eps=eps)  # across ROIs, per attribute
    s_for_b = normalise_similarity(s, pair, norm, dim=2, eps=eps)  # across attributes, per ROI
    a = masked_softmax(lambda_a * s_for_a, pair, dim=2)  # over attributes j
    b = masked_softmax(lambda_b * s_for_b, pair, dim=1)  # over ROIs i
    weighted_phi = alpha.unsqueeze(-1) * phi  # (B, K, d) alpha_i phi_i
    attended_image = torch.einsum("bkm,bkd->bmd", a, weighted_phi)  # A_j
    attended_text = torch.einsum("bkm,bmd->bkd", b, m)  # B_i
    r_text = F.cosine_similarity(attended_image, m, dim=-1, eps=eps)  # (B, M)
    r_roi = F.cosine_similarity(attended_text, phi, dim=-1, eps=eps)  # (B, K)
    return CrossAttention(
        s=s, a=a, b=b, attended_image=attended_image, attended_text=attended_text,
        r_text=r_text, r_roi=r_roi,
        s_roi=(alpha * r_roi).sum(1) if SRoiPooling(s_roi_pooling) is SRoiPooling.ALPHA else masked_mean(r_roi, roi_mask, 1),
        s_text=masked_mean(r_text, attr_mask, 1),
    )


__all__ = [
    "CrossAttention", "cosine_matrix", "cross_attention", "l2norm", "masked_mean",
    "masked_softmax", "normalise_similarity",
]
