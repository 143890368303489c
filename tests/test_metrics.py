from __future__ import annotations

import numpy as np
import pytest

from grounding.evaluation import metrics as M


def test_box_iou_hand_computed_table():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    b = np.array([
        [0, 0, 10, 10],  # identical -> 1
        [5, 5, 15, 15],  # overlap 25, union 175
        [10, 0, 20, 10],  # touching edge -> 0
        [0, 0, 5, 10],  # contained half -> 0.5
        [20, 20, 30, 30],  # disjoint -> 0
    ], dtype=float)
    iou = M.box_iou(a, b)
    assert iou.shape == (2, 5)
    np.testing.assert_allclose(iou[0], [1.0, 25 / 175, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(iou[0], iou[1])


def test_box_iou_zero_union_is_zero_not_nan():
    point = np.array([[3, 3, 3, 3]], dtype=float)
    line = np.array([[0, 5, 10, 5]], dtype=float)  # zero height
    box = np.array([[0, 0, 10, 10]], dtype=float)
    for x, y in [(point, point), (point, box), (line, box), (line, line)]:
        v = M.box_iou(x, y)
        assert np.isfinite(v).all() and v.item() == 0.0


def test_box_iou_empty_inputs():
    assert M.box_iou(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    assert M.box_iou([], []).shape == (0, 0)


@pytest.mark.parametrize("bad", [[10, 0, 0, 10], [0, 10, 10, 0], [0, 0, np.nan, 10], [0, 0, np.inf, 1]])
def test_unordered_or_nonfinite_boxes_raise(bad):
    with pytest.raises(ValueError, match="x1<=x2"):
        M.box_iou(np.array([bad], dtype=float), np.array([[0, 0, 1, 1]], dtype=float))


def test_wrong_shape_raises():
    with pytest.raises(ValueError, match="expected"):
        M.validate_boxes(np.zeros((2, 3)))


def test_flat_parquet_form_is_accepted():
    assert M.validate_boxes([0, 0, 1, 1, 2, 2, 3, 3]).shape == (2, 4)


def test_localization_accuracy_matching_rule():
    gt = [
        np.array([[0, 0, 10, 10], [50, 50, 60, 60]], float),  # top-1 hits the SECOND gt box -> hit
        np.array([[0, 0, 10, 10]], float),  # no prediction -> miss
        np.zeros((0, 4)),  # no ground truth -> excluded from the denominator
        np.array([[0, 0, 10, 10]], float),  # IoU 25/175 = 0.143 -> miss at 0.25, hit at 0.1
    ]
    pred = [
        np.array([[50, 50, 60, 60], [100, 100, 110, 110]], float),
        np.zeros((0, 4)),
        np.array([[0, 0, 5, 5]], float),  # would be a false positive; not counted
        np.array([[5, 5, 15, 15]], float),
    ]
    out = M.localization_accuracy(pred, gt, thresholds=(0.1, 0.25, 0.5))
    assert out[M.NUM_IMAGES_WITH_BOXES] == 3
    assert out[M.hit_name(0.1)] == pytest.approx(2 / 3)
    assert out[M.hit_name(0.25)] == pytest.approx(1 / 3)
    assert out[M.HIT_IOU50] == pytest.approx(1 / 3)
    assert out[M.MEAN_BEST_IOU] == pytest.approx((1.0 + 0.0 + 25 / 175) / 3)


def test_top1_vs_topk_and_score_sorting():
    gt = [np.array([[0, 0, 10, 10]], float)]
    pred = [np.array([[30, 30, 40, 40], [0, 0, 10, 10]], float)]  # the hit is ranked second
    assert M.localization_accuracy(pred, gt, (0.5,))[M.HIT_IOU50] == 0.0
    assert M.localization_accuracy(pred, gt, (0.5,), top_k=2)[M.hit_name(0.5, 2)] == 1.0
    # scores reorder: the hit has the higher score -> top-1 hit
    scores = [np.array([0.1, 0.9])]
    assert M.localization_accuracy(pred, gt, (0.5,), pred_scores=scores)[M.HIT_IOU50] == 1.0


def test_no_ground_truth_anywhere_gives_zero_with_count():
    out = M.localization_accuracy([np.zeros((0, 4))], [np.zeros((0, 4))], (0.5,))
    assert out == {M.HIT_IOU50: 0.0, M.NUM_IMAGES_WITH_BOXES: 0.0, M.MEAN_BEST_IOU: 0.0}


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="prediction lists"):
        M.localization_accuracy([np.zeros((0, 4))], [], (0.5,))


def test_metric_names():
    assert M.HIT_IOU25 == "hit_iou25" and M.HIT_IOU50 == "hit_iou50" and M.HIT_IOU75 == "hit_iou75"
    assert M.hit_name(0.5, 3) == "hit3_iou50"
    assert M.prefixed({M.AP50: 1.0}) == {"val_ap50": 1.0}


def test_average_precision_hand_computed():
    gt = [np.array([[0, 0, 10, 10]], float), np.zeros((0, 4))]
    perfect = M.average_precision([np.array([[0, 0, 10, 10]], float), np.zeros((0, 4))],
                                  [np.array([0.9]), np.array([])], gt)
    assert perfect == pytest.approx(1.0)
    # a false positive on the negative image ranked above the true positive: P = 1/2 at recall 1
    half = M.average_precision([np.array([[0, 0, 10, 10]], float), np.array([[0, 0, 5, 5]], float)],
                               [np.array([0.8]), np.array([0.9])], gt)
    assert half == pytest.approx(0.5)
    # a duplicate of a matched box is a false positive (each GT box matches once)
    dup = M.average_precision([np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float), np.zeros((0, 4))],
                              [np.array([0.9, 0.8]), np.array([])], gt)
    assert dup == pytest.approx(1.0)
    assert M.average_precision([np.zeros((0, 4))], [np.array([])], [np.zeros((0, 4))]) == 0.0
    assert M.average_precision([np.zeros((0, 4))], [np.array([])], [np.array([[0, 0, 1, 1]], float)]) == 0.0
