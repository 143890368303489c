"""The benchmark table: scaling verdicts and failure reporting (no Ray, no timing asserted)."""

from __future__ import annotations

import json

import pytest

from grounding.distributed.bench_suite import NEEDS, SECTIONS, Row, SuiteOptions, _row_dict, markdown_table, run_suite


def test_growth_is_relative_to_linear_for_throughputs_and_times():
    assert Row("t", "images/s", {1: 100.0, 4: 120.0}, {}).growth() == pytest.approx(1.2)
    assert Row("t", "images/s", {1: 100.0, 4: 50.0}, {}).growth() == pytest.approx(0.5)
    # a time that grows 4x for 4x the data is exactly linear; 2x is better than linear
    assert Row("t", "s", {1: 10.0, 4: 40.0}, {}, higher_is_better=False).growth() == pytest.approx(1.0)
    assert Row("t", "s", {1: 10.0, 4: 20.0}, {}, higher_is_better=False).growth() == pytest.approx(2.0)
    assert Row("t", "x", {1: 1.5, 4: 1.6}, {}, scales=False).growth() is None
    assert Row("t", "s", {1: 3.0}, {}).growth() is None


def test_markdown_table_labels_scaling_and_shows_failed_sections():
    rows = [Row("ingest: Ray", "images/s", {1: 200.0, 4: 230.0}, {1: 2900, 4: 3000}),
            Row("epoch", "s", {1: 1.0, 4: 6.0}, {}, higher_is_better=False)]
    result = {"sizes": [1, 4], "sections": {
        "ingest": {"rows": [_row_dict(r) for r in rows]},
        "tune": {"rows": [], "error": "RuntimeError: no CPUs"}}}
    table = markdown_table(result, header=False)
    lines = table.splitlines()
    assert lines[0].startswith("| benchmark | unit | 1x | 4x | scaling |")
    assert "| ingest: Ray | images/s | 200 | 230 | 1.15 (linear or better) | 2,900 / 3,000 |" in table
    assert "| epoch | s | 1 | 6 | 0.67 (sub-linear) |" in table
    near = _row_dict(Row("n", "images/s", {1: 100.0, 4: 95.0}, {}))
    assert "0.95 (about linear)" in markdown_table({"sizes": [1, 4], "sections": {"x": {"rows": [near]}}})
    assert any(line.startswith("| tune: FAILED") and "RuntimeError: no CPUs" in line for line in lines)
    json.dumps(result)  # the JSON written next to it must serialise


def test_suite_refuses_a_work_dir_without_the_pipeline_outputs_it_needs(tmp_path):
    opts = SuiteOptions(work_dir=str(tmp_path), out_dir=str(tmp_path / "out"), sections=("train",), ray=False)
    with pytest.raises(FileNotFoundError, match="rois, word_vectors"):
        run_suite(None, opts)
    with pytest.raises(ValueError, match="unknown bench section"):
        run_suite(None, SuiteOptions(work_dir=str(tmp_path), out_dir=str(tmp_path), sections=("nope",)))
    assert set(NEEDS) == set(SECTIONS)


def test_scale_rows_replicate_to_the_exact_count_with_fresh_ids_and_the_table_compares_peaks():
    import pyarrow as pa

    from grounding.distributed.bench_scale import _rows, markdown

    base = pa.table({"image_id": [f"i{k}" for k in range(7)], "image_uri": [f"/x/{k}.dcm" for k in range(7)]})
    rows = _rows(base, 100)
    assert rows.num_rows == 100 and len(set(rows.column("image_id").to_pylist())) == 100
    assert set(rows.column("image_uri").to_pylist()) == set(base.column("image_uri").to_pylist())  # same files
    stage = {"rows_out": 10, "seconds": 1.0, "rows_per_s": 10.0, "baseline_mib": 100, "peak_mib": 120,
             "growth_mib": 20.0}
    table = markdown({"runs": [{"rows": 10, "prepare": stage, "extract_rois": stage},
                               {"rows": 100, "prepare": {**stage, "rows_out": 100}, "extract_rois": stage}],
                      "peak_ratio": {"prepare": 1.0, "extract_rois": 1.0}})
    assert "| prepare | 100 | 100 |" in table and "prepare 1.0, extract_rois 1.0" in table
