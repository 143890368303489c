"""pipeline.json's per-stage clock and the bench rows built from it (no Ray started)."""

from __future__ import annotations

from grounding.distributed.bench_suite import stage_rows
from grounding.distributed.pipeline import stage_clock


def test_stage_clock_splits_training_stages_only():
    train = stage_clock({"seconds": 30.0, "startup_s": 18.04, "compute_s": 6.0})
    assert train == {"wall_s": 30.0, "startup_s": 18.0, "compute_s": 6.0, "wall_over_startup_compute": 1.248}
    assert stage_clock({"seconds": 4.0}) == {"wall_s": 4.0, "startup_s": None, "compute_s": None}


def test_stage_rows_report_each_training_stage_against_the_goal():
    stages = {1: {"synth": stage_clock({"seconds": 9.0}),
                  "grounding": stage_clock({"seconds": 30.0, "startup_s": 18.0, "compute_s": 6.0}),
                  "detector": stage_clock({"seconds": 50.0, "startup_s": 20.0, "compute_s": 20.0})}}
    rows = stage_rows(stages, "smoke pipeline")
    assert [r.name for r in rows] == ["smoke pipeline: detector wall / (start-up + compute)",
                                      "smoke pipeline: grounding wall / (start-up + compute)"]
    assert rows[0].values == {1: 1.25} and rows[1].values == {1: 1.25}
    assert "goal <= 1.25" in rows[1].note and "start-up 18.0 s" in rows[1].note
