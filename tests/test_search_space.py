"""Search spaces (no Ray): parsing, key validation, distributions, resources, results files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from grounding.config import GroundingConfig, load_config
from grounding.config.search_space import (
    SearchAlg, SearchSpaceError, apply_overrides, check_against_config, decode_overrides, encode_choice,
    load_space, parse_space, plan_resources, trial_run_id,
)

ROOT = Path(__file__).resolve().parents[1]


def _space(**params):
    data = {"metric": "val_attribute_auc", "mode": "max", "num_samples": 4,
            "params": params or {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}
    return data


@pytest.mark.parametrize("name", ["smoke.yaml", "baseline.yaml"])
def test_shipped_spaces_parse_and_fit_the_config(name):
    space = load_space(ROOT / "tune_spaces" / name)
    cfg = load_config(None, space.fixed_overrides())
    check_against_config(space, cfg)
    assert space.metric == "val_attribute_auc" and space.mode.value == "max"
    assert {"loss.beta", "model.lambda_a", "model.lambda_b", "optim.lr", "optim.weight_decay",
            "model.similarity_norm", "model.roi_hidden", "model.classifier_hidden"} <= set(space.params)
    if name == "smoke.yaml":
        assert space.num_samples == 8 and cfg.optim.max_epochs <= 4 and space.search_alg is SearchAlg.OPTUNA


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(SearchSpaceError, match=r"spc\.yaml: params\.model\.lamda_a: unknown config key "
                                               r"\(did you mean model\.lambda_a\?\)"):
        parse_space(_space(**{"model.lamda_a": {"uniform": [1, 2]}}), source="spc.yaml")
    with pytest.raises(SearchSpaceError, match=r"fixed\.optim\.nope: unknown config key"):
        parse_space({**_space(), "fixed": {"optim.nope": 1}}, source="s")
    with pytest.raises(SearchSpaceError, match="params.model: unknown config key"):  # a section, not a leaf
        parse_space(_space(model={"choice": [1]}))
    with pytest.raises(SearchSpaceError, match="schedular: unknown setting"):
        parse_space({**_space(), "schedular": {}})


@pytest.mark.parametrize("spec, message", [
    ({"model.roi_hidden": {"uniform": [8, 64]}}, "integer: use randint"),
    ({"model.similarity_norm": {"uniform": [0, 1]}}, "use choice"),
    ({"optim.lr": {"loguniform": [0.0, 1e-2]}}, "lower bound > 0"),
    ({"optim.lr": {"uniform": [1e-2, 1e-3]}}, "must be < upper bound"),
    ({"optim.lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
    ({"optim.lr": {"quniform": [0.1, 0.5]}}, "quniform needs 3 numbers"),
    ({"model.classifier_hidden": {"choice": [64, 128]}}, "choices must be lists"),
    ({"model.roi_hidden": {"randint": [8.5, 64]}}, "integer bounds"),
])
def test_bad_distributions_are_refused(spec, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse_space(_space(**spec))


def test_metric_mode_and_loss_scale_guard():
    with pytest.raises(SearchSpaceError, match="not an epoch metric"):
        parse_space({**_space(), "metric": "val_iou"})
    with pytest.raises(SearchSpaceError, match="better when minimised"):
        parse_space({**_space(), "metric": "val_loss", "mode": "max"})
    # val_loss grows with the margin beta: a beta search cannot be judged by it
    with pytest.raises(SearchSpaceError, match="val_loss is not comparable.*loss.beta"):
        parse_space({**_space(**{"loss.beta": {"uniform": [0.2, 1.0]}}), "metric": "val_loss", "mode": "min"})
    ok = parse_space({"metric": "val_loss", "params": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}})
    assert ok.mode.value == "min"  # default mode follows the metric


def test_values_outside_the_config_ranges_fail_before_anything_starts():
    space = parse_space(_space(**{"model.lambda_a": {"uniform": [1.0, 150.0]}}), source="s.yaml")
    with pytest.raises(SearchSpaceError, match=r"s\.yaml: params\.model\.lambda_a: value 150\.0 is invalid"):
        check_against_config(space, GroundingConfig())
    space = parse_space(_space(**{"model.similarity_norm": {"choice": ["clipped_l2norm", "l1"]}}))
    with pytest.raises(SearchSpaceError, match="'l1' is invalid"):
        check_against_config(space, GroundingConfig())
    with pytest.raises(SearchSpaceError, match="num_workers must be >= 1"):
        check_against_config(parse_space(_space()), GroundingConfig().with_overrides({"train.num_workers": 0}))


def test_distributions_sample_inside_their_bounds_with_the_right_shape():
    space = parse_space(_space(**{
        "optim.lr": {"loguniform": [1e-4, 1e-1]}, "loss.beta": {"quniform": [0.2, 1.0, 0.1]},
        "model.roi_hidden": {"randint": [8, 10]}, "model.alpha_hidden": {"lograndint": [1, 1000]},
        "model.classifier_hidden": {"choice": [[32], [64, 32]]}, "model.dropout": {"uniform": [0.0, 0.3]},
    }))
    rng = np.random.default_rng(0)
    draws = {k: [d.sample(rng) for _ in range(2000)] for k, d in space.params.items()}
    lr = np.array(draws["optim.lr"])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1
    assert 0.2 < np.mean(lr < 1e-2) < 0.9  # log-uniform: 2/3 of draws below 1e-2 (uniform would give ~9 %)
    beta = np.array(draws["loss.beta"])
    assert np.allclose(np.round(beta * 10), beta * 10) and beta.min() >= 0.2 and beta.max() <= 1.0
    assert set(draws["model.roi_hidden"]) == {8, 9, 10}  # both ends inclusive
    ah = np.array(draws["model.alpha_hidden"])
    assert ah.min() >= 1 and ah.max() <= 1000 and np.median(ah) < 100  # log scale: median ~ sqrt(1000)
    assert set(draws["model.classifier_hidden"]) == {(32,), (64, 32)}
    d = np.array(draws["model.dropout"])
    assert d.min() >= 0 and d.max() <= 0.3


def test_list_choices_round_trip_through_tune_and_build_a_config():
    enc = encode_choice((128, 64))
    assert enc == "[128, 64]" and encode_choice(3) == 3
    cfg = apply_overrides(GroundingConfig(), {"model.classifier_hidden": enc, "optim.lr": np.float64(0.003),
                                              "model.similarity_norm": "softmax"})
    assert cfg.model.classifier_hidden == (128, 64) and cfg.optim.lr == 0.003
    assert cfg.model.similarity_norm.value == "softmax"
    assert decode_overrides({"model.classifier_hidden": "[8]"}) == {"model.classifier_hidden": [8]}


def test_plan_resources_fits_the_cluster():
    space = parse_space({**_space(), "resources": {"gpus_per_worker": 0.25, "max_concurrent_trials": 0}})
    cpu = plan_resources(space.resources, 1, 0.99, False, cluster_cpus=2, cluster_gpus=0)
    assert (cpu.use_gpu, cpu.gpus_per_worker, cpu.max_concurrent_trials) == (False, 0.0, 2)
    gpu = plan_resources(space.resources, 1, 2.0, False, cluster_cpus=64, cluster_gpus=2)
    assert gpu.use_gpu and gpu.gpus_per_worker == 0.25 and gpu.max_concurrent_trials == 8  # 2 GPUs / 0.25
    two = plan_resources(space.resources, 2, 4.0, True, cluster_cpus=20, cluster_gpus=8)
    assert two.max_concurrent_trials == 2  # CPU-bound: 20 // (2 * 4 + 0.01)
    capped = parse_space({**_space(), "resources": {"max_concurrent_trials": 1}})
    assert plan_resources(capped.resources, 1, 0.99, False, 2, 0).max_concurrent_trials == 1
    with pytest.raises(SearchSpaceError, match="no GPUs"):
        plan_resources(space.resources, 1, 1.0, True, cluster_cpus=8, cluster_gpus=0)
    with pytest.raises(SearchSpaceError, match="one trial needs 4.01 CPUs"):
        plan_resources(space.resources, 1, 4.0, False, cluster_cpus=2, cluster_gpus=0)
    assert trial_run_id("ab12c_00003") == "train-ab12c_00003"


def test_results_table_plot_and_best_config(tmp_path):
    from grounding.distributed import tune_results as tr

    space = parse_space(_space(**{"optim.lr": {"loguniform": [1e-4, 1e-2]},
                                  "model.classifier_hidden": {"choice": [[32], [64, 32]]}}), source="t.yaml")
    hist = lambda aucs: [{"epoch": i, "val_attribute_auc": a, "val_loss": 1.0 - a, "train_loss": 1.0}  # noqa: E731
                         for i, a in enumerate(aucs)]
    rows = [
        tr.trial_row("t1", tr.TERMINATED, {"optim.lr": 1e-3, "model.classifier_hidden": [32]},
                     hist([0.6, 0.8, 0.7]), space, max_epochs=3),
        tr.trial_row("t2", tr.TERMINATED, {"optim.lr": 5e-3, "model.classifier_hidden": [64, 32]},
                     hist([0.55]), space, max_epochs=3),
        tr.trial_row("t3", tr.ERROR, {"optim.lr": 2e-4, "model.classifier_hidden": [32]}, [], space, 3, "boom"),
    ]
    assert rows[0]["best_val_attribute_auc"] == 0.8 and rows[0]["best_epoch"] == 1  # best epoch, not last
    assert rows[0]["final_val_attribute_auc"] == 0.7 and rows[1]["stopped_early"] and not rows[0]["stopped_early"]
    assert [r["trial_id"] for r in tr.rank_rows(rows, space)] == ["t1", "t2"]  # ERROR never ranks
    late = tr.trial_row("t4", tr.TERMINATED, {"optim.lr": 1e-3}, hist([0.9, 0.6, 0.65]), space, max_epochs=3)
    assert [r["trial_id"] for r in tr.rank_rows(rows + [late], space)][:2] == ["t1", "t4"]  # last epoch, not a spike
    csv_path, pq_path = tr.write_results(rows, tmp_path)
    table = pq.read_table(pq_path).to_pylist()
    assert [r["status"] for r in table] == ["TERMINATED", "TERMINATED", "ERROR"]
    assert table[1]["param.model.classifier_hidden"] == "[64, 32]" and math.isnan(table[2]["best_val_attribute_auc"])
    assert Path(csv_path).read_text().splitlines()[0].startswith("trial_id,status,epochs,stopped_early,param.")
    png = tr.plot_metric_vs_params(rows, space, tmp_path / "p.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    base = GroundingConfig().with_overrides({"run.work_dir": str(tmp_path / "w"), "optim.max_epochs": 3})
    best = tr.write_best(base, rows[0], {"optim.lr": 1e-3, "model.classifier_hidden": [32]}, space, tmp_path)
    cfg = load_config(str(best))  # what `grounding train --config best.yaml` does
    assert cfg.optim.lr == 1e-3 and cfg.model.classifier_hidden == (32,) and cfg.optim.max_epochs == 3
    chosen = json.loads((tmp_path / "best.json").read_text())
    assert chosen["trial_id"] == "t1" and chosen["value"] == 0.7 and chosen["best_epoch_value"] == 0.8
    summary = tr.summarise(rows, space, wall_s=360.0)
    assert summary["terminated"] == 2 and summary["errored"] == 1 and summary["trials_per_hour"] == 20.0
