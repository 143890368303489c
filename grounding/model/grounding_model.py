"""The cross-attention grounding model (design.md 1.4-1.5).

``GroundingModel.forward`` returns one :class:`GroundingOutput` in every mode. With attributes it
also fills the four similarities the triplet loss needs; without them (inference needs only the
image) those fields are ``None``. Losses live in ``grounding.model.losses``.

ROI geometry ``g_i`` is xyxy normalised to [0, 1] (the ROI cache convention). :func:`localize`
maps the chosen boxes back to whatever pixel frame the caller gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from grounding.model.attention import cross_attention, masked_softmax
from grounding.config import ClassifierInput, SimilarityNorm, SRoiPooling
from grounding.text.vocabulary import NUM_ATTRIBUTES


@dataclass
class GroundingOutput:
    """Model output, the same type in training and inference.

    Attributes:
        phi: (B, K, d) ROI embeddings.
        alpha: (B, K) ROI attention (sums to 1 over real ROIs; 0 at padding).
        logits: (B, 22) attribute logits (``vocabulary.ATTRIBUTES`` order).
        s_roi, s_text: (B,) S_roi(I, T), S_text(I, T); None without attributes.
        s_roi_neg: (B,) S_roi(I_n, T) on the negative ROIs; None without them.
        s_text_neg: (B,) S_text(I, T_n) with the negative words; None without attributes.
        has_text: (B,) bool, the study has at least one attribute; None without attributes.
        r_roi: (B, K) R_roi_i with the study's own report; None without attributes.
        candidates: (B, K) bool, the ROIs alpha may attend to (``max_roi_area``).
    """

    phi: torch.Tensor
    alpha: torch.Tensor
    logits: torch.Tensor
    s_roi: Optional[torch.Tensor] = None
    s_text: Optional[torch.Tensor] = None
    s_roi_neg: Optional[torch.Tensor] = None
    s_text_neg: Optional[torch.Tensor] = None
    has_text: Optional[torch.Tensor] = None
    r_roi: Optional[torch.Tensor] = None
    candidates: Optional[torch.Tensor] = None

    @property
    def probabilities(self) -> torch.Tensor:
        """(B, 22) attribute probabilities."""
        return torch.sigmoid(self.logits)


class RoiEmbedding(nn.Module):
    """phi_i = W1 r_i + W2 [LN(Wg g_i) | LN(Ws s_i)]."""

    def __init__(self, feature_dim: int, embed_dim: int, roi_hidden: int, geometry_dim: int) -> None:
        super().__init__()
        if roi_hidden > 0:
            self.w1: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, roi_hidden), nn.ReLU(), nn.Linear(roi_hidden, embed_dim)
            )
        else:
            self.w1 = nn.Linear(feature_dim, embed_dim)
        self.wg = nn.Linear(4, geometry_dim)
        self.ws = nn.Linear(1, geometry_dim)
        self.ln_g = nn.LayerNorm(geometry_dim)
        self.ln_s = nn.LayerNorm(geometry_dim)
        self.w2 = nn.Linear(2 * geometry_dim, embed_dim)

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(B, K, C), (B, K, 4), (B, K) -> (B, K, d)."""
        geo = torch.cat([self.ln_g(self.wg(boxes)), self.ln_s(self.ws(scores.unsqueeze(-1)))], dim=-1)
        return self.w1(features) + self.w2(geo)


class GroundingModel(nn.Module):
    """ROI embedding + ROI attention + attribute classifier + cross-attention similarities.

    Args:
        feature_dim: C, the detector's ROI feature width.
        word_vectors: (22, d) attribute vectors m_j (frozen buffer, saved in the state_dict).
        negative_vectors: (22, d) vectors of each attribute's negative word (T_n).
        roi_hidden, geometry_dim, alpha_hidden, classifier_hidden, dropout: layer sizes.
        similarity_norm, lambda_a, lambda_b: cross-attention settings.
        classifier_input: ``pooled_features`` (the paper: classifier(sum_i alpha_i phi_i)) or the
            extension ``per_roi_logits`` (sum_i alpha_i classifier(phi_i)).
        score_prior: extension: add log s_i to alpha's logits, so alpha starts from the detector's
            ranking and learns a correction to it (off = the paper).
        max_roi_area: alpha attends only to ROIs whose normalised box area is at most this (an image
            without one keeps all); 1.0 = every ROI (the paper).
        s_roi_pooling: ``mean`` (the paper) or the extension ``alpha`` (``grounding.config.SRoiPooling``).
    """

    def __init__(
        self,
        feature_dim: int,
        word_vectors: torch.Tensor | np.ndarray,
        negative_vectors: torch.Tensor | np.ndarray,
        roi_hidden: int = 128,
        geometry_dim: int = 16,
        alpha_hidden: int = 64,
        classifier_hidden: tuple[int, ...] = (64,),
        similarity_norm: SimilarityNorm = SimilarityNorm.CLIPPED_L2NORM,
        lambda_a: float = 4.0,
        lambda_b: float = 9.0,
        dropout: float = 0.1,
        classifier_input: ClassifierInput = ClassifierInput.POOLED_FEATURES,
        score_prior: bool = False,
        max_roi_area: float = 1.0,
        s_roi_pooling: SRoiPooling = SRoiPooling.MEAN,
    ) -> None:
        super().__init__()
        wv = torch.as_tensor(np.asarray(word_vectors), dtype=torch.float32)
        nv = torch.as_tensor(np.asarray(negative_vectors), dtype=torch.float32)
        if wv.ndim != 2 or wv.shape[0] != NUM_ATTRIBUTES or nv.shape != wv.shape:
            raise ValueError(
                f"word vectors must be ({NUM_ATTRIBUTES}, d) and negatives the same shape; "
                f"got {tuple(wv.shape)} and {tuple(nv.shape)}"
            )
        embed_dim = int(wv.shape[1])
        self.register_buffer("word_vectors", wv)
        self.register_buffer("negative_vectors", nv)
        self.similarity_norm = SimilarityNorm(similarity_norm)
        self.lambda_a = float(lambda_a)
        self.lambda_b = float(lambda_b)
        self.classifier_input = ClassifierInput(classifier_input)
        self.score_prior = bool(score_prior)
        self.max_roi_area = float(max_roi_area)
        self.s_roi_pooling = SRoiPooling(s_roi_pooling)
        self.embed = RoiEmbedding(feature_dim, embed_dim, roi_hidden, geometry_dim)
        self.alpha_mlp = nn.Sequential(nn.Linear(embed_dim, alpha_hidden), nn.Tanh(), nn.Linear(alpha_hidden, 1))
        layers: list[nn.Module] = []
        width = embed_dim
        for h in classifier_hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, NUM_ATTRIBUTES))
        self.classifier = nn.Sequential(*layers)

    def _image(self, features, boxes, scores, mask):
        phi = self.embed(features, boxes, scores)  # (B, K, d)
        logits = self.alpha_mlp(phi).squeeze(-1)
        if self.score_prior:
            logits = logits + scores.clamp_min(1e-6).log()
        if self.max_roi_area < 1.0:
            area = (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)
            small = mask & (area <= self.max_roi_area)
            mask = torch.where(small.any(1, keepdim=True), small, mask)
        alpha = masked_softmax(logits, mask, dim=1)  # (B, K)
        return phi, alpha, mask

    def forward(
        self,
        roi_features: torch.Tensor,
        roi_boxes: torch.Tensor,
        roi_scores: torch.Tensor,
        roi_mask: torch.Tensor,
        attribute_ids: Optional[torch.Tensor] = None,
        attribute_mask: Optional[torch.Tensor] = None,
        neg_roi_features: Optional[torch.Tensor] = None,
        neg_roi_boxes: Optional[torch.Tensor] = None,
        neg_roi_scores: Optional[torch.Tensor] = None,
        neg_roi_mask: Optional[torch.Tensor] = None,
    ) -> GroundingOutput:
        """Run the model.

        Args:
            roi_features: (B, K, C) float. roi_boxes: (B, K, 4) xyxy in [0, 1].
            roi_scores: (B, K) detector scores. roi_mask: (B, K) bool, real ROIs.
            attribute_ids: (B, M) long indices into the 22 attributes (padding: any index, masked).
            attribute_mask: (B, M) bool, real attributes.
            neg_roi_*: the negative ROIs I_n, same shapes as the positives (K may differ).

        Returns:
            :class:`GroundingOutput`; similarity fields are filled when attributes are given.
        """
        roi_mask = roi_mask.bool()
        phi, alpha, candidates = self._image(roi_features, roi_boxes, roi_scores, roi_mask)
        if self.classifier_input is ClassifierInput.PER_ROI_LOGITS:
            logits = (alpha.unsqueeze(-1) * self.classifier(phi)).sum(1)  # (B, 22)
        else:
            logits = self.classifier((alpha.unsqueeze(-1) * phi).sum(1))  # v = sum_i alpha_i phi_i
        out = GroundingOutput(phi=phi, alpha=alpha, logits=logits, candidates=candidates)
        if attribute_ids is None:
            return out
        if attribute_mask is None:
            raise ValueError("attribute_mask is required with attribute_ids")
        attr_mask = attribute_mask.bool()
        ids = attribute_ids.long().clamp(0, NUM_ATTRIBUTES - 1)
        m = self.word_vectors[ids]  # (B, M, d)
        m_neg = self.negative_vectors[ids]
        kw = dict(norm=self.similarity_norm, lambda_a=self.lambda_a, lambda_b=self.lambda_b,
                  s_roi_pooling=self.s_roi_pooling)
        pos = cross_attention(phi, alpha, roi_mask, m, attr_mask, **kw)
        neg_text = cross_attention(phi, alpha, roi_mask, m_neg, attr_mask, **kw)
        out.s_roi, out.s_text, out.s_text_neg = pos.s_roi, pos.s_text, neg_text.s_text
        out.has_text = attr_mask.any(1)
        out.r_roi = pos.r_roi
        if neg_roi_features is not None:
            if neg_roi_boxes is None or neg_roi_scores is None or neg_roi_mask is None:
                raise ValueError("negative ROIs need features, boxes, scores and mask")
            n_mask = neg_roi_mask.bool()
            phi_n, alpha_n, _ = self._image(neg_roi_features, neg_roi_boxes, neg_roi_scores, n_mask)
            out.s_roi_neg = cross_attention(phi_n, alpha_n, n_mask, m, attr_mask, **kw).s_roi
        return out


@torch.no_grad()
def roi_relevance(model: GroundingModel, output: GroundingOutput, roi_mask: torch.Tensor,
                  attribute_ids: torch.Tensor, attribute_mask: torch.Tensor) -> torch.Tensor:
    """R_roi_i = cos(B_i, phi_i) computed with the study's own report attributes: (B, K).

    A diagnostic, not inference (which has no report): ranking ROIs by it tells whether the
    cross-attention learned which regions the words describe at all. Studies without attributes get 0.
    """
    ids = attribute_ids.long().clamp(0, NUM_ATTRIBUTES - 1)
    ca = cross_attention(output.phi, output.alpha, roi_mask.bool(), model.word_vectors[ids], attribute_mask.bool(),
                         norm=model.similarity_norm, lambda_a=model.lambda_a, lambda_b=model.lambda_b)
    return ca.r_roi


def build_model(feature_dim: int, word_vectors, negative_vectors, model_cfg) -> GroundingModel:
    """Build from a ``ModelConfig`` (the one place the config bag is unpacked)."""
    return GroundingModel(
        feature_dim, word_vectors, negative_vectors,
        roi_hidden=model_cfg.roi_hidden, geometry_dim=model_cfg.geometry_dim,
        alpha_hidden=model_cfg.alpha_hidden, classifier_hidden=tuple(model_cfg.classifier_hidden),
        similarity_norm=model_cfg.similarity_norm, lambda_a=model_cfg.lambda_a,
        lambda_b=model_cfg.lambda_b, dropout=model_cfg.dropout,
        classifier_input=model_cfg.classifier_input, score_prior=model_cfg.score_prior,
        max_roi_area=model_cfg.max_roi_area, s_roi_pooling=model_cfg.s_roi_pooling,
    )


@dataclass
class Localization:
    """Per image: kept boxes (xyxy, in the frame of ``roi_boxes`` times ``scale``) and their alpha."""

    boxes: list[np.ndarray]  # each (k, 4), k <= top_k
    scores: list[np.ndarray]  # each (k,), alpha of the kept ROIs


def localize(
    output: GroundingOutput,
    roi_boxes: torch.Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 1,
    roi_mask: torch.Tensor | None = None,
    scale: tuple[float, float] | None = None,
) -> Localization:
    """Inference: rank ROIs by alpha, NMS (``torchvision.ops.nms``), keep the top boxes.

    Args:
        output: the model's output (uses ``alpha``).
        roi_boxes: (B, K, 4) xyxy (normalised [0, 1] in the ROI cache).
        iou_threshold: NMS IoU above which the lower-alpha box is dropped.
        top_k: boxes kept per image after NMS.
        roi_mask: (B, K) bool, real ROIs (default: ROIs with alpha > 0).
        scale: optional (width, height) to map normalised boxes to pixels of the original image.

    Returns:
        :class:`Localization`; an image without ROIs gets ``zeros((0, 4))``.
    """
    import torchvision  # here, not at the top: importing torchvision.ops costs ~7 s CPU (torch._dynamo) in
    # every Ray worker that unpickles the training loop, and training never calls NMS

    if top_k < 1:
        raise ValueError("top_k must be >= 1")
    alpha = output.alpha.detach().float().cpu()
    boxes_all = roi_boxes.detach().float().cpu()
    mask = (alpha > 0) if roi_mask is None else roi_mask.bool().cpu()
    out_boxes, out_scores = [], []
    for b in range(alpha.shape[0]):  # NMS is per image by nature; the model math is batched
        boxes, scores = boxes_all[b][mask[b]], alpha[b][mask[b]]
        keep = torchvision.ops.nms(boxes, scores, iou_threshold)[:top_k]
        kept = boxes[keep].numpy().reshape(-1, 4)
        if scale is not None:
            kept = kept * np.array([scale[0], scale[1], scale[0], scale[1]], dtype=np.float32)
        out_boxes.append(kept)
        out_scores.append(scores[keep].numpy())
    return Localization(boxes=out_boxes, scores=out_scores)


__all__ = ["GroundingModel", "GroundingOutput", "Localization", "RoiEmbedding", "build_model", "localize",
           "roi_relevance"]
