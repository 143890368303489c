"""Engine: learning on learnable synthetic ROIs, NaN handling, early stopping, batching of ROI rows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from grounding.model import engine
from grounding.model.batching import collate_rois, decode_features, iter_table_batches, select_rows
from grounding.bench.train import synthetic_roi_table, synthetic_vectors
from grounding.model.grounding_model import GroundingModel

KW = dict(beta=0.8, use_classification=True, bce_weight=1.0)


def _model(c=12, d=8, seed=0):
    torch.manual_seed(seed)
    v = synthetic_vectors(d, seed)
    return GroundingModel(c, v.vectors, v.negative_vectors, roi_hidden=32, geometry_dim=4, alpha_hidden=8,
                          classifier_hidden=(32,), dropout=0.0)


def test_collate_pads_rois_and_attributes_and_drops_bad_rows():
    table = synthetic_roi_table(6, num_rois=4, feature_dim=8, seed=3, empty_fraction=0.0)
    rows = table.to_pydict()
    rows["roi_features"][1] = rows["roi_features"][1][:-2]  # truncated features: dropped
    rows["roi_scores"][2] = rows["roi_scores"][2][:3]  # fewer ROIs: header says 4 -> size mismatch
    rows["attributes"][3] = []  # negative report
    rows["attributes"][4] = ["left", "not-a-word"]
    b = collate_rois(rows)
    assert b.image_ids == [rows["image_id"][i] for i in (0, 3, 4, 5)]
    assert b.roi_features.shape == (4, 4, 8) and b.roi_mask.all()
    assert b.attribute_mask[1].sum() == 0 and b.targets[1].sum() == 0
    assert b.attribute_ids[2][b.attribute_mask[2]].tolist() == [0]  # 'left' only
    feats = decode_features(rows["roi_features"][0], 4, 8)
    np.testing.assert_allclose(b.roi_features[0].numpy(), feats)


def test_collate_pads_variable_roi_counts():
    t = synthetic_roi_table(2, num_rois=3, feature_dim=4, seed=1).to_pydict()
    t2 = synthetic_roi_table(1, num_rois=5, feature_dim=4, seed=2).to_pydict()
    rows = {k: t[k] + t2[k] for k in t}
    b = collate_rois(rows)
    assert b.roi_features.shape == (3, 5, 4)
    assert b.roi_mask.sum(1).tolist() == [3, 3, 5]


def test_training_lowers_both_losses_and_beats_chance_on_held_out_rows():
    table = synthetic_roi_table(240, num_rois=6, feature_dim=12, splits=(0.75, 0.0), seed=0)
    train, test = select_rows(table, "train"), select_rows(table, "test")
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = engine.train_one_epoch(model, opt, iter_table_batches(train, 32), **KW)
    for _ in range(14):
        last = engine.train_one_epoch(model, opt, iter_table_batches(train, 32), **KW)
    assert last.triplet < first.triplet - 0.05
    assert last.bce < first.bce - 0.05
    ev = engine.evaluate_epoch(model, iter_table_batches(test, 32), **KW)
    assert ev.samples == test.num_rows and ev.auc > 0.75, ev.auc


def test_nan_batch_is_skipped_and_counted_then_raises_after_k():
    table = synthetic_roi_table(32, num_rois=4, feature_dim=12, splits=(1.0, 0.0), seed=4)
    batches = list(iter_table_batches(table, 8))
    bad = batches[1]
    bad.roi_features[0, 0, 0] = float("nan")  # reaches the loss (collate would drop NaN rows)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: any change would come from NaN
    stats = engine.train_one_epoch(model, opt, batches, max_consecutive_nonfinite=3, **KW)
    assert stats.skipped_nonfinite == 1 and stats.steps == len(batches) - 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(engine.NonFiniteLossError) as err:
        engine.train_one_epoch(model, opt, [bad, bad, bad], max_consecutive_nonfinite=3, **KW)
    assert bad.image_ids[0] in str(err.value) and err.value.count == 3
    # None batches (every row invalid) are skipped, not counted as NaN
    stats = engine.train_one_epoch(model, opt, [None, batches[0]], **KW)
    assert stats.skipped_empty == 1 and stats.steps == 1


@pytest.mark.parametrize(
    "losses, stop",
    [
        ([1.0, 0.9, 0.8], False),  # not enough epochs
        ([1.0, 0.9, 0.8, 0.7], False),  # still improving by > 0.1 %
        ([1.0, 0.5, 0.4999, 0.4998], True),  # improved < 0.1 % over the last 2 epochs
        ([1.0, 0.5, 0.6, 0.7], True),  # rising
        ([1.0, 0.5, float("nan"), 0.3], False),
    ],
)
def test_should_stop(losses, stop):
    assert engine.should_stop(losses, patience=2, min_rel_change=0.001) is stop


def test_attribute_auc_skips_single_class_columns():
    targets = np.zeros((4, 22))
    targets[:2, 0] = 1
    probs = np.zeros((4, 22))
    probs[:, 0] = [0.9, 0.8, 0.1, 0.2]
    assert engine.attribute_auc(probs, targets) == 1.0
    assert math.isnan(engine.attribute_auc(probs, np.zeros((4, 22))))


def test_attribute_auc_on_the_device_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    targets = (rng.random((60, 22)) < 0.3).astype(np.float32)
    targets[:, 5] = 0  # one single-class column: skipped by both
    probs = np.round(rng.random((60, 22)), 1).astype(np.float32)  # coarse values: many ties
    want = engine.attribute_auc(probs, targets)
    got = engine.attribute_auc_torch(torch.from_numpy(probs), torch.from_numpy(targets)).item()
    assert abs(got - want) < 1e-12 and 0.3 < want < 0.7
    assert math.isnan(engine.attribute_auc_torch(torch.from_numpy(probs), torch.zeros(60, 22)).item())


def test_in_memory_shard_reshuffles_every_row_once_per_epoch():
    from grounding.model.batching import InMemoryShard

    table = synthetic_roi_table(n=23, seed=3)
    shard = InMemoryShard([table.slice(0, 10), table.slice(10, 0), table.slice(10)], chunk_rows=7)
    assert shard.num_rows == 23
    ids = lambda batches: [i for b in batches for i in b.image_ids]  # noqa: E731
    stored = ids(shard.batches(5))
    assert stored == table["image_id"].to_pylist()
    epoch_a, epoch_b = ids(shard.batches(5, seed=1)), ids(shard.batches(5, seed=2))
    assert sorted(epoch_a) == sorted(stored) and sorted(epoch_b) == sorted(stored)  # each row exactly once
    assert epoch_a != stored and epoch_a != epoch_b  # a new order per epoch seed
    assert epoch_a == ids(shard.batches(5, seed=1))  # same seed, same order
    assert [len(b) for b in shard.batches(5)] == [5, 5, 5, 5, 3]


def test_in_memory_shard_batches_equal_collating_those_rows_directly():
    """Collated once (chunked, padded to the shard's maxima, features in float16) and indexed per batch =
    collating the same rows per batch: the model sees the same numbers."""
    from grounding.model.batching import InMemoryShard

    table = synthetic_roi_table(n=19, seed=4)
    shard = InMemoryShard([table], chunk_rows=6)
    batch = next(shard.batches(8, seed=5))
    direct = collate_rois(table.take(
        [table["image_id"].to_pylist().index(i) for i in batch.image_ids]).to_pydict())
    k, m = direct.roi_features.shape[1], direct.attribute_ids.shape[1]
    torch.testing.assert_close(batch.roi_features[:, :k], direct.roi_features)  # features were float16 already
    torch.testing.assert_close(batch.neg_roi_features[:, :k], direct.neg_roi_features)
    assert batch.roi_features.dtype == torch.float32
    torch.testing.assert_close(batch.targets, direct.targets)
    assert torch.equal(batch.attribute_mask[:, :m], direct.attribute_mask)
    assert not batch.attribute_mask[:, m:].any()  # wider padding is masked out
    assert torch.equal(batch.attribute_ids[:, :m][direct.attribute_mask], direct.attribute_ids[direct.attribute_mask])


def test_in_memory_shard_keeps_the_step_count_when_rows_are_invalid():
    from grounding.model.batching import InMemoryShard

    table = synthetic_roi_table(n=10, seed=6)
    feats = table["roi_features"].to_pylist()
    feats[3] = feats[3][:-2]  # truncated features: the row is dropped with a warning
    table = table.set_column(table.schema.get_field_index("roi_features"), "roi_features",
                             pa.array(feats, type=table.schema.field("roi_features").type))
    shard = InMemoryShard([table])
    assert shard.rows_read == 10 and shard.num_rows == 9
    out = list(shard.batches(3))
    assert len(out) == 4 and out[-1] is None  # ceil(10 / 3) steps on every rank, the empty one skipped
    assert sum(len(b) for b in out if b is not None) == 9


def test_in_memory_shard_of_nothing_yields_no_batches():
    from grounding.model.batching import InMemoryShard

    assert InMemoryShard([]).num_rows == 0 and list(InMemoryShard([]).batches(4)) == []
