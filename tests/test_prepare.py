"""The prepare job: every good image exactly once, every bad one quarantined with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from grounding.data import boxes as box_ops
from grounding.data.prepare import PrepareOptions, prepare_row
from grounding.data.prepared import bytes_to_pixels, read_prepared
from grounding.data.schema import manifest_table, pseudonym

from badfiles import write_all  # noqa: E402  (tests/ is on sys.path under pytest)

OPTIONS = PrepareOptions(image_size=64, max_pixels=4096 * 4096, low_percentile=0.5, high_percentile=99.5)


def _manifest(paths, boxes=None):
    rows = []
    for i, path in enumerate(paths):
        rows.append({"image_id": pseudonym("image", str(path), "synthetic"), "patient_id": f"p{i}",
                     "study_id": f"s{i}", "dataset": "synthetic", "image_uri": str(path),
                     "boxes": (boxes or {}).get(i, []), "has_boxes": i in (boxes or {}),
                     "report_text": "opacity"})
    return manifest_table(rows)


def test_prepare_row_clips_and_scales_boxes(tmp_path):
    made = dict((p.name, p) for p, reason in write_all(tmp_path) if reason is None)
    path = made["good_16bit.dcm"]
    row = _manifest([path]).to_pylist()[0]
    prepared, quarantined = prepare_row(dict(row, boxes=[10, 20, 50, 60, -30, -30, -10, -10]), OPTIONS)
    assert quarantined is None
    h, w = prepared["height"], prepared["width"]
    assert prepared["boxes"] == [10.0, 20.0, 50.0, 60.0]  # the box fully outside is dropped
    expected = box_ops.scale_boxes(np.array([[10, 20, 50, 60]]), (h, w), (64, 64))
    np.testing.assert_allclose(box_ops.unflatten(prepared["boxes_prepared"]), expected)
    assert bytes_to_pixels(prepared["pixels"], 64).shape == (64, 64)
    assert "report_text" not in prepared


@pytest.mark.ray
@pytest.mark.parametrize("engine", ["ray_data", "ray_tasks"])
def test_prepare_job_quarantines_every_bad_kind(tmp_path, ray_local, engine):
    from grounding.distributed.prepare import run_prepare

    made = write_all(tmp_path / "in")
    manifest = _manifest([p for p, _ in made])
    # a duplicate row of the first good file must be quarantined, not written twice
    dup = manifest.slice(0, 1)
    import pyarrow as pa
    manifest = pa.concat_tables([manifest, dup])
    out = tmp_path / "out"
    summary = run_prepare(manifest, str(out), OPTIONS, batch_size=4, rows_per_shard=8, engine=engine)

    good = sorted(str(p) for p, reason in made if reason is None)
    bad = {str(p): reason.value for p, reason in made if reason is not None}
    table = read_prepared(str(out))
    assert sorted(table.column("image_uri").to_pylist()) == good  # each good image exactly once
    quarantine = {r["image_uri"]: r for r in __import__("pyarrow.parquet", fromlist=["x"])
                  .read_table(out / "quarantine.parquet").to_pylist() if r["reason"] != "duplicate"}
    assert {k: v["reason"] for k, v in quarantine.items()} == bad
    assert summary["read"] == len(made) + 1
    assert summary["written"] == len(good)
    assert summary["quarantined"] == len(bad) + 1 and summary["by_reason"]["duplicate"] == 1
    from collections import Counter  # every reason counted exactly, not just the total

    assert {k: v for k, v in summary["by_reason"].items() if v} == {**Counter(bad.values()), "duplicate": 1}
    assert json.loads((out / "summary.json").read_text())["written"] == len(good)
    assert not list(out.glob("_quarantine_parts-*")) and not list(out.glob("_images-*"))
    # messages never quote header identity
    text = (out / "quarantine.parquet").read_bytes() + b"".join(p.read_bytes() for p in (out / "images").glob("*"))
    assert b"Canaryname" not in text and b"CANARY-PID" not in text


def test_prepare_cuts_few_large_blocks_two_per_cpu_capped_in_rows():
    from grounding.distributed.prepare import MAX_BLOCK_ROWS, plan_blocks

    assert plan_blocks(768, cpus=2) == 4  # per-task overhead dominates small blocks on few cores
    assert plan_blocks(3, cpus=8) == 3  # never an empty block
    assert plan_blocks(0, cpus=2) == 1
    huge = 100 * MAX_BLOCK_ROWS + 1
    assert plan_blocks(huge, cpus=2) == 101  # a retried task never redoes more than MAX_BLOCK_ROWS images
