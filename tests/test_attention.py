"""Each equation of design.md 1.4 against numbers computed independently with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding.model.attention import (
    cosine_matrix, cross_attention, masked_mean, masked_softmax, normalise_similarity,
)
from grounding.config import SimilarityNorm


def _np_l2(x, axis):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-8)


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_cos(a, b):
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-8)


def _reference(phi, alpha, m, lam_a, lam_b, norm):
    """Straight transcription of the equations for ONE study (K ROIs, M attributes), numpy only."""
    s = _np_l2(phi, 1) @ _np_l2(m, 1).T  # (K, M) cosine
    if norm == "clipped_l2norm":
        leaky = np.where(s > 0, s, 0.1 * s)
        s_a, s_b = _np_l2(leaky, 0), _np_l2(leaky, 1)  # across ROIs (for a), across attributes (for b)
    elif norm == "softmax":
        s_a, s_b = _np_softmax(s, 0), _np_softmax(s, 1)
    else:
        s_a = s_b = s
    a = _np_softmax(lam_a * s_a, 1)  # over attributes j
    b = _np_softmax(lam_b * s_b, 0)  # over ROIs i
    A = np.einsum("km,kd->md", a, alpha[:, None] * phi)  # A_j = sum_i alpha_i phi_i a_ij
    B = np.einsum("km,md->kd", b, m)  # B_i = sum_j m_j b_ij
    r_text = _np_cos(A, m)
    r_roi = _np_cos(B, phi)
    return s, a, b, A, B, r_text.mean(), r_roi.mean()


def test_hand_computed_two_by_two():
    # phi_1 = (1,0), phi_2 = (0,1); m_1 = (1,0), m_2 = (1,1)/.. -> s = [[1, .7071], [0, .7071]]
    phi = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    m = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    s = cosine_matrix(phi, m)
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(s[0].numpy(), [[1.0, r], [0.0, r]], atol=1e-6)
    # norm none, lambda 1: a row 0 = softmax([1, .7071]); b col 0 = softmax([1, 0])
    alpha = torch.tensor([[0.5, 0.5]])
    ones = torch.ones(1, 2, dtype=torch.bool)
    ca = cross_attention(phi, alpha, ones, m, ones, SimilarityNorm.NONE, 1.0, 1.0)
    e1, e2 = np.exp(1.0), np.exp(r)
    assert ca.a[0, 0, 0].item() == pytest.approx(e1 / (e1 + e2), abs=1e-6)
    assert ca.b[0, 0, 0].item() == pytest.approx(e1 / (e1 + 1.0), abs=1e-6)
    assert ca.b[0, 1, 1].item() == pytest.approx(0.5, abs=1e-6)  # equal similarity -> equal weight
    # B_2 = b_21 m_1 + b_22 m_2 = 1/(e+1) (2,0) + 0.5 (1,1); R_roi_2 = cos(B_2, (0,1)) = .5/|B_2|
    b21 = 1.0 / (e1 + 1.0)
    expected = np.array([2 * b21 + 0.5, 0.5])
    np.testing.assert_allclose(ca.attended_text[0, 1].numpy(), expected, atol=1e-6)
    assert ca.r_roi[0, 1].item() == pytest.approx(0.5 / np.linalg.norm(expected), abs=1e-6)


@pytest.mark.parametrize("norm", ["clipped_l2norm", "softmax", "none"])
def test_matches_numpy_reference(norm):
    rng = np.random.default_rng(1)
    K, M, d = 5, 3, 6
    phi = rng.standard_normal((K, d)).astype(np.float32)
    m = rng.standard_normal((M, d)).astype(np.float32)
    alpha = _np_softmax(rng.standard_normal(K), 0).astype(np.float32)
    s, a, b, A, B, s_text, s_roi = _reference(phi.astype(np.float64), alpha.astype(np.float64), m.astype(np.float64), 4.0, 9.0, norm)
    t = torch.from_numpy
    ca = cross_attention(t(phi)[None], t(alpha)[None], torch.ones(1, K, dtype=torch.bool), t(m)[None],
                         torch.ones(1, M, dtype=torch.bool), SimilarityNorm(norm), 4.0, 9.0)
    np.testing.assert_allclose(ca.s[0].numpy(), s, atol=1e-5)
    np.testing.assert_allclose(ca.a[0].numpy(), a, atol=1e-5)
    np.testing.assert_allclose(ca.b[0].numpy(), b, atol=1e-5)
    np.testing.assert_allclose(ca.attended_image[0].numpy(), A, atol=1e-5)
    np.testing.assert_allclose(ca.attended_text[0].numpy(), B, atol=1e-5)
    assert ca.s_text.item() == pytest.approx(s_text, abs=1e-5)
    assert ca.s_roi.item() == pytest.approx(s_roi, abs=1e-5)


def test_clipped_l2norm_axis_is_across_query_for_each_context():
    s = torch.tensor([[[0.5, -1.0], [0.5, 0.0]]])  # (1, K=2, M=2)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    across_rois = normalise_similarity(s, mask, SimilarityNorm.CLIPPED_L2NORM, dim=1)
    # column j=0: leaky = (.5, .5) -> (.7071, .7071); column j=1: leaky = (-.1, 0) -> (-1, 0)
    np.testing.assert_allclose(across_rois[0].numpy(), [[0.70710677, -1.0], [0.70710677, 0.0]], atol=1e-6)
    across_attrs = normalise_similarity(s, mask, SimilarityNorm.CLIPPED_L2NORM, dim=2)
    # row i=0: (.5, -.1)/|.| ; row i=1: (.5, 0) -> (1, 0)
    n = np.sqrt(0.25 + 0.01)
    np.testing.assert_allclose(across_attrs[0].numpy(), [[0.5 / n, -0.1 / n], [1.0, 0.0]], atol=1e-6)


def test_padding_equals_unpadded_and_masks_get_zero_weight():
    rng = np.random.default_rng(2)
    phi = torch.tensor(rng.standard_normal((1, 3, 4)), dtype=torch.float32)
    m = torch.tensor(rng.standard_normal((1, 2, 4)), dtype=torch.float32)
    alpha = torch.tensor([[0.2, 0.3, 0.5]])
    full = cross_attention(phi, alpha, torch.ones(1, 3, dtype=torch.bool), m, torch.ones(1, 2, dtype=torch.bool),
                           SimilarityNorm.CLIPPED_L2NORM, 4.0, 9.0)
    # pad: 2 extra junk ROIs and 1 junk attribute
    phi_p = torch.cat([phi, torch.full((1, 2, 4), 7.0)], 1)
    m_p = torch.cat([m, torch.full((1, 1, 4), -3.0)], 1)
    alpha_p = torch.cat([alpha, torch.zeros(1, 2)], 1)
    roi_mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    attr_mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    pad = cross_attention(phi_p, alpha_p, roi_mask, m_p, attr_mask, SimilarityNorm.CLIPPED_L2NORM, 4.0, 9.0)
    assert pad.s_roi.item() == pytest.approx(full.s_roi.item(), abs=1e-6)
    assert pad.s_text.item() == pytest.approx(full.s_text.item(), abs=1e-6)
    assert pad.a[0, 3:].abs().sum() == 0 and pad.b[0, :, 2].abs().sum() == 0


def test_no_attributes_gives_zero_similarity_and_finite_gradients():
    phi = torch.randn(2, 3, 4, requires_grad=True)
    alpha = torch.full((2, 3), 1 / 3)
    attr_mask = torch.tensor([[True], [False]])
    ca = cross_attention(phi, alpha, torch.ones(2, 3, dtype=torch.bool), torch.randn(2, 1, 4), attr_mask,
                         SimilarityNorm.CLIPPED_L2NORM, 4.0, 9.0)
    assert ca.s_text[1].item() == 0.0 and ca.s_roi[1].item() == 0.0
    (ca.s_roi.sum() + ca.s_text.sum()).backward()
    assert torch.isfinite(phi.grad).all()


def test_masked_softmax_and_mean():
    x = torch.tensor([[1.0, 2.0, 100.0]])
    p = masked_softmax(x, torch.tensor([[True, True, False]]), dim=1)
    e = np.exp([1.0, 2.0])
    np.testing.assert_allclose(p[0].numpy(), [e[0] / e.sum(), e[1] / e.sum(), 0.0], atol=1e-6)
    assert masked_softmax(x, torch.zeros(1, 3, dtype=torch.bool), 1).abs().sum() == 0
    assert masked_mean(x, torch.tensor([[True, True, False]]), 1).item() == pytest.approx(1.5)
