"""GroundingModel: equations of phi/alpha/v, one output type in every mode, padding, localize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounding.model.attention import cross_attention
from grounding.config import ModelConfig, SimilarityNorm, SRoiPooling
from grounding.model.grounding_model import GroundingModel, GroundingOutput, build_model, localize


def _model(c=8, d=6, **kw):
    rng = np.random.default_rng(0)
    return GroundingModel(c, rng.standard_normal((22, d)), rng.standard_normal((22, d)), roi_hidden=0,
                          geometry_dim=4, alpha_hidden=5, classifier_hidden=(7,), dropout=0.0, **kw)


def _inputs(b=2, k=4, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(roi_features=torch.randn(b, k, c, generator=g), roi_boxes=torch.rand(b, k, 4, generator=g),
                roi_scores=torch.rand(b, k, generator=g), roi_mask=torch.ones(b, k, dtype=torch.bool))


def test_phi_alpha_v_match_the_equations():
    model = _model().eval()
    x = _inputs()
    out = model(**x)
    e = model.embed
    with torch.no_grad():
        # phi_i = W1 r_i + W2 [LN(Wg g_i) | LN(Ws s_i)]
        geo = torch.cat([torch.nn.functional.layer_norm(e.wg(x["roi_boxes"]), (4,), e.ln_g.weight, e.ln_g.bias),
                         torch.nn.functional.layer_norm(e.ws(x["roi_scores"][..., None]), (4,), e.ln_s.weight, e.ln_s.bias)], -1)
        phi = x["roi_features"] @ e.w1.weight.T + e.w1.bias + geo @ e.w2.weight.T + e.w2.bias
        alpha = torch.softmax(model.alpha_mlp(phi).squeeze(-1), dim=1)
        v = (alpha[..., None] * phi).sum(1)
    torch.testing.assert_close(out.phi, phi)
    torch.testing.assert_close(out.alpha, alpha)
    torch.testing.assert_close(out.logits, model.classifier(v))
    assert out.phi.shape == (2, 4, 6) and out.logits.shape == (2, 22)


def test_one_output_type_in_every_mode_and_similarities_use_word_vectors():
    model = _model(lambda_a=3.0, lambda_b=5.0).eval()
    x = _inputs()
    image_only = model(**x)
    assert isinstance(image_only, GroundingOutput) and image_only.s_roi is None
    ids = torch.tensor([[3, 5], [7, 0]])
    amask = torch.tensor([[True, True], [True, False]])
    neg = {f"neg_{k}": v for k, v in _inputs(seed=1, k=3).items()}
    out = model(**x, attribute_ids=ids, attribute_mask=amask, **neg)
    assert isinstance(out, GroundingOutput)
    ref = cross_attention(out.phi, out.alpha, x["roi_mask"], model.word_vectors[ids], amask,
                          SimilarityNorm.CLIPPED_L2NORM, 3.0, 5.0)
    torch.testing.assert_close(out.s_roi, ref.s_roi)
    ref_neg = cross_attention(out.phi, out.alpha, x["roi_mask"], model.negative_vectors[ids], amask,
                              SimilarityNorm.CLIPPED_L2NORM, 3.0, 5.0)
    torch.testing.assert_close(out.s_text_neg, ref_neg.s_text)  # T_n = negative words' vectors
    assert out.s_roi_neg.shape == (2,) and out.has_text.tolist() == [True, True]


def test_padded_rois_do_not_change_the_output():
    model = _model().eval()
    x = _inputs(b=1, k=3)
    base = model(**x)
    padded = {k: torch.cat([v, v[:, :2] * 0 + 5], 1) for k, v in x.items() if k != "roi_mask"}
    padded["roi_mask"] = torch.tensor([[True, True, True, False, False]])
    out = model(**padded)
    torch.testing.assert_close(out.logits, base.logits)
    assert out.alpha[0, 3:].abs().sum() == 0


def test_rejects_wrong_vector_shapes_and_builds_from_config():
    with pytest.raises(ValueError, match="22"):
        GroundingModel(8, np.zeros((21, 4)), np.zeros((21, 4)))
    m = build_model(8, np.zeros((22, 4)), np.zeros((22, 4)), ModelConfig(similarity_norm=SimilarityNorm.SOFTMAX))
    assert m.similarity_norm is SimilarityNorm.SOFTMAX and m.word_vectors.shape == (22, 4)


def test_localize_ranks_by_alpha_and_suppresses_duplicates():
    alpha = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0.11, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0, 0, 1, 1]]])
    out = GroundingOutput(phi=torch.zeros(1, 4, 2), alpha=alpha, logits=torch.zeros(1, 22))
    mask = torch.tensor([[True, True, True, False]])
    loc = localize(out, boxes, iou_threshold=0.5, top_k=2, roi_mask=mask, scale=(100, 200))
    # box 1 overlaps box 0 (IoU ~.97) and is suppressed; the padded box 3 is never chosen
    np.testing.assert_allclose(loc.boxes[0], [[10, 20, 50, 100], [60, 120, 90, 180]], atol=1e-4)
    np.testing.assert_allclose(loc.scores[0], [0.5, 0.2])
    empty = localize(out, boxes, 0.5, 1, roi_mask=torch.zeros(1, 4, dtype=torch.bool))
    assert empty.boxes[0].shape == (0, 4)


# -- localization extensions (named switches; off = the paper) ----------------------------------
def test_score_prior_adds_log_score_to_alpha_logits():
    from grounding.config import ClassifierInput  # noqa: F401 - the switch's type lives in the config

    plain, prior = _model().eval(), _model(score_prior=True).eval()
    prior.load_state_dict(plain.state_dict())
    x = _inputs()
    a0, a1 = plain(**x).alpha, prior(**x).alpha
    expected = torch.softmax(plain.alpha_mlp(plain(**x).phi).squeeze(-1) + x["roi_scores"].log(), dim=1)
    torch.testing.assert_close(a1, expected)
    assert not torch.allclose(a0, a1)


def test_per_roi_logits_pool_the_classifier_outputs_by_alpha():
    model = _model(classifier_input="per_roi_logits").eval()
    out = model(**_inputs())
    with torch.no_grad():
        expected = (out.alpha[..., None] * model.classifier(out.phi)).sum(1)
    torch.testing.assert_close(out.logits, expected)
    paper = _model().eval()
    paper.load_state_dict(model.state_dict())
    assert not torch.allclose(paper(**_inputs()).logits, out.logits)  # the switch changes the model


def test_roi_relevance_is_r_roi_with_the_studys_own_words():
    from grounding.model.grounding_model import roi_relevance

    model = _model().eval()
    x = _inputs()
    ids = torch.tensor([[3, 5], [7, 0]])
    amask = torch.tensor([[True, True], [False, False]])  # study 2 has no attributes
    out = model(**x)
    rel = roi_relevance(model, out, x["roi_mask"], ids, amask)
    ref = cross_attention(out.phi, out.alpha, x["roi_mask"], model.word_vectors[ids], amask,
                          SimilarityNorm.CLIPPED_L2NORM, model.lambda_a, model.lambda_b)
    torch.testing.assert_close(rel, ref.r_roi)
    assert rel[1].abs().sum() == 0 and rel[0].abs().sum() > 0


def test_max_roi_area_keeps_alpha_off_large_boxes():
    model = _model(max_roi_area=0.1).eval()
    x = _inputs(b=2, k=3)
    x["roi_boxes"] = torch.tensor([[[0, 0, 0.2, 0.2], [0, 0, 0.9, 0.9], [0.5, 0.5, 0.7, 0.8]],
                                   [[0, 0, 0.5, 0.5], [0, 0, 0.9, 0.9], [0, 0, 1.0, 1.0]]])
    alpha = model(**x).alpha.detach()
    assert alpha[0, 1] == 0 and float(alpha[0, [0, 2]].sum()) == pytest.approx(1.0)  # area 0.81 > 0.1
    assert (alpha[1] > 0).all()  # no ROI small enough: every ROI stays a candidate
    torch.testing.assert_close(_model().eval()(**x).alpha.sum(1), torch.ones(2))


def _alpha_grad_of_s_roi(pooling):
    model = _model(s_roi_pooling=pooling)
    x = _inputs()
    ids = torch.tensor([[3, 5], [7, 1]])
    out = model(**x, attribute_ids=ids, attribute_mask=torch.ones(2, 2, dtype=torch.bool))
    out.s_roi.sum().backward()
    return sum(float(p.grad.abs().sum()) for p in model.alpha_mlp.parameters() if p.grad is not None), out


def test_paper_s_roi_never_trains_alpha_and_the_alpha_pooling_extension_does():
    # design.md 1.4: S_roi = mean_i R_roi_i has no alpha in it (localization-notes.md); the extension does.
    grad_mean, out = _alpha_grad_of_s_roi(SRoiPooling.MEAN)
    assert grad_mean == 0.0
    torch.testing.assert_close(out.s_roi, out.r_roi.mean(1))
    grad_alpha, out = _alpha_grad_of_s_roi(SRoiPooling.ALPHA)
    assert grad_alpha > 0.0
    torch.testing.assert_close(out.s_roi, (out.alpha * out.r_roi).sum(1))


def test_output_carries_r_roi_and_alpha_candidates():
    model = _model(max_roi_area=0.1).eval()
    x = _inputs(b=1, k=3)
    x["roi_boxes"] = torch.tensor([[[0, 0, 0.2, 0.2], [0, 0, 0.9, 0.9], [0.5, 0.5, 0.7, 0.8]]])
    out = model(**x, attribute_ids=torch.tensor([[2]]), attribute_mask=torch.ones(1, 1, dtype=torch.bool))
    assert out.candidates.tolist() == [[True, False, True]]
    assert out.r_roi.shape == (1, 3)
