"""Triplet loss with explicit negatives and BCE, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from grounding.model.losses import bce_loss, grounding_loss, triplet_loss, triplet_terms


def test_triplet_terms_hand_computed():
    # study 0: .8 - .9 + .2 = .1 and .8 - .7 + .5 = .6 -> .7 ; study 1: both hinges clipped to 0
    s_roi = torch.tensor([0.9, 0.9]); s_roi_neg = torch.tensor([0.2, -0.5])
    s_text = torch.tensor([0.7, 0.95]); s_text_neg = torch.tensor([0.5, 0.0])
    out = triplet_terms(s_roi, s_roi_neg, s_text, s_text_neg, beta=0.8)
    assert out.tolist() == pytest.approx([0.7, 0.0], abs=1e-6)


def test_studies_without_attributes_are_masked_out():
    s = torch.tensor([0.1, 0.1, 0.1])
    neg = torch.tensor([0.0, 0.0, 0.0])
    has_text = torch.tensor([True, False, True])
    # each study with text: (.8 - .1) * 2 = 1.4 ; mean over the 2 with text = 1.4
    assert triplet_loss(s, neg, s, neg, has_text, 0.8).item() == pytest.approx(1.4, abs=1e-6)
    none = triplet_loss(s, neg, s, neg, torch.zeros(3, dtype=torch.bool), 0.8)
    assert none.item() == 0.0


def test_bce_hand_computed():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.exp(2.0))) / 2
    assert bce_loss(logits, targets).item() == pytest.approx(expected, abs=1e-6)


def test_without_classification_ablation_does_not_train_the_classifier():
    logits = torch.zeros(2, 22, requires_grad=True)
    s = torch.tensor([0.1, 0.2], requires_grad=True)
    z = torch.zeros(2)
    on = grounding_loss(s, z, s, z, torch.ones(2, dtype=torch.bool), logits, torch.ones(2, 22), 0.8, True, 0.5)
    assert on.total.item() == pytest.approx(on.triplet.item() + 0.5 * on.bce.item(), abs=1e-6)
    off = grounding_loss(s, z, s, z, torch.ones(2, dtype=torch.bool), logits, torch.ones(2, 22), 0.8, False, 0.5)
    assert off.total.item() == pytest.approx(off.triplet.item(), abs=1e-6)
    off.total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0
    assert off.bce.item() == pytest.approx(math.log(2), abs=1e-6)  # still reported


def test_other_study_negatives_are_the_next_studys_positive_rois():
    from grounding.bench.train import synthetic_roi_table
    from grounding.model.batching import iter_table_batches

    batch = next(iter_table_batches(synthetic_roi_table(4), 4))
    rolled = batch.with_other_study_negatives()
    for name in ("roi_features", "roi_boxes", "roi_scores", "roi_mask"):
        neg = getattr(rolled, f"neg_{name}")
        for b in range(4):
            torch.testing.assert_close(neg[b], getattr(batch, name)[(b - 1) % 4])
    torch.testing.assert_close(rolled.roi_features, batch.roi_features)  # positives untouched
    assert not torch.equal(batch.neg_roi_features, rolled.neg_roi_features)


def test_alpha_distillation_is_zero_at_the_target_and_trains_only_alpha():
    from grounding.model.losses import alpha_distillation

    r_roi = torch.tensor([[0.9, 0.1, -0.3, 0.5]], requires_grad=True)
    cand = torch.tensor([[True, True, True, False]])  # ROI 3 is not a candidate: ignored even with high R_roi
    q = torch.softmax(9.0 * r_roi.detach()[:, :3], 1)
    at_target = torch.cat([q, torch.zeros(1, 1)], 1)
    assert alpha_distillation(at_target, r_roi, cand, torch.tensor([True]), 9.0).item() == pytest.approx(0, abs=1e-6)
    alpha = torch.tensor([[0.2, 0.5, 0.3, 0.0]], requires_grad=True)
    loss = alpha_distillation(alpha, r_roi, cand, torch.tensor([True]), 9.0)
    expected = float((q[0] * (q[0].log() - alpha.detach()[0, :3].log())).sum())
    assert loss.item() == pytest.approx(expected, rel=1e-5) and loss.item() > 0
    loss.backward()
    assert r_roi.grad is None  # the report side is the teacher: detached
    assert alpha.grad[0, 0] < 0  # more alpha on the ROI the report describes lowers the loss


def test_alpha_distillation_ignores_studies_without_text():
    from grounding.model.losses import alpha_distillation

    alpha = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    r_roi = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    cand = torch.ones(2, 2, dtype=torch.bool)
    both = alpha_distillation(alpha, r_roi, cand, torch.tensor([True, True]), 4.0)
    first = alpha_distillation(alpha[:1], r_roi[:1], cand[:1], torch.tensor([True]), 4.0)
    only_first = alpha_distillation(alpha, r_roi, cand, torch.tensor([True, False]), 4.0)
    assert only_first.item() == pytest.approx(first.item()) and both.item() != pytest.approx(first.item())
    assert alpha_distillation(alpha, r_roi, cand, torch.tensor([False, False]), 4.0).item() == 0.0
