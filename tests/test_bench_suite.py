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
