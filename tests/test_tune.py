"""The `tune` job end to end on tiny synthetic data: a small search, and restore after SIGKILL.

Both start the job as a subprocess (its own local Ray), as a RayJob retry would, so the driver can
be killed for real. Slow: each Train run has ~15-25 s of fixed Ray cost on 2 CPUs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from grounding.bench.train import synthetic_roi_table
from grounding.data.storage import write_table
from helpers import write_test_vectors  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"optim.batch_size": 16, "model.geometry_dim": 4, "optim.max_epochs": 2, "train.num_workers": 1,
        "train.cpus_per_worker": 0.99, "train.tensorboard": False, "train.checkpoints_to_keep": 1}


def _setup(tmp_path: Path, num_samples: int, search_alg: str = "optuna") -> list[str]:
    rois, wv = tmp_path / "rois.parquet", tmp_path / "wv"
    write_table(synthetic_roi_table(48, feature_dim=12), str(rois))
    write_test_vectors(wv)
    space = {
        "metric": "val_attribute_auc", "mode": "max", "num_samples": num_samples, "search_alg": search_alg,
        "seed": 0, "scheduler": {"grace_period": 1, "reduction_factor": 2}, "fixed": TINY,
        "params": {"optim.lr": {"loguniform": [1e-3, 3e-2]}, "model.roi_hidden": {"choice": [8, 16]},
                   "model.alpha_hidden": {"choice": [4, 8]}, "model.classifier_hidden": {"choice": [[8], [16, 8]]}},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    # --address local: a fresh Ray even when another instance on this machine is the "current" one
    return [sys.executable, "-m", "rayjobs.tune", "--space", str(tmp_path / "space.yaml"), "--rois", str(rois),
            "--word-vectors", str(wv), "--work-dir", str(tmp_path / "work"), "--address", "local"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _summary(stdout: str) -> dict:
    """The job's JSON line (Ray may print worker log lines after it)."""
    return json.loads([line for line in stdout.splitlines() if line.startswith('{"name"')][-1])


def _trial_states(storage: Path, name: str) -> dict[str, str]:
    """{trial_id: status} from Tune's experiment checkpoint (what a restore will read)."""
    out = {}
    for f in sorted((storage / name).glob("experiment_state-*.json")):
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):  # being rewritten
            continue
        for entry in data.get("trial_data", []):
            state = json.loads(entry[0])
            out[state["trial_id"]] = state["status"]
    return out


def _attempts(work: Path, name: str, trial_id: str) -> int:
    f = work / "tune" / name / "train" / f"train-{trial_id}" / "attempts.jsonl"
    return len(f.read_text().splitlines()) if f.exists() else 0


@pytest.mark.ray
@pytest.mark.slow
def test_small_search_writes_table_plot_and_a_trainable_best_config(tmp_path):
    from grounding.config import load_config

    cmd = _setup(tmp_path, num_samples=3) + ["--name", "small"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(proc.stdout)
    out = tmp_path / "work" / "tune" / "small"
    assert summary["trials"] == 3 and summary["terminated"] == 3 and summary["trials_per_hour"] > 0
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 3 and {r["status"] for r in rows} == {"TERMINATED"}
    assert all(1 <= r["epochs"] <= 2 and 0.0 <= r["best_val_attribute_auc"] <= 1.0 for r in rows)
    assert len({(r["param.optim.lr"], r["param.model.roi_hidden"]) for r in rows}) == 3  # distinct samples
    # every trial's Train run is named after the trial and ran once
    assert all(_attempts(tmp_path / "work", "small", r["trial_id"]) == 1 for r in rows)
    assert (out / "metric_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    best = json.loads((out / "best.json").read_text())
    assert best["value"] == max(r["final_val_attribute_auc"] for r in rows)
    cfg = load_config(summary["best_config"])  # `grounding train --config best.yaml` reads it
    assert cfg.optim.lr == pytest.approx(best["params"]["optim.lr"])
    assert list(cfg.model.classifier_hidden) == best["params"]["model.classifier_hidden"]
    assert cfg.optim.max_epochs == 2 and cfg.run.work_dir == str(tmp_path / "work")


@pytest.mark.ray
@pytest.mark.slow
def test_sigkilled_search_restores_without_rerunning_finished_trials(tmp_path):
    name = "restore-me"
    cmd = _setup(tmp_path, num_samples=4) + ["--name", name]
    work, storage = tmp_path / "work", tmp_path / "work" / "ray_storage"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # own process group: its local Ray dies with it below
    try:
        deadline = time.time() + 600
        states: dict[str, str] = {}
        while time.time() < deadline and proc.poll() is None:
            states = _trial_states(storage, name)
            if any(s == "TERMINATED" for s in states.values()):
                break
            time.sleep(1.0)
        assert proc.poll() is None, "search ended before it could be interrupted"
        assert any(s == "TERMINATED" for s in states.values()), (tmp_path / "first.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-search
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # and its local Ray, as when a RayJob pod goes away
        except ProcessLookupError:
            pass
        log.close()
    finished_before = {t for t, s in states.items() if s == "TERMINATED"}
    assert all(_attempts(work, name, t) == 1 for t in finished_before)
    time.sleep(2.0)
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = _summary(second.stdout)
    assert summary["restored"] is True
    rows = pq.read_table(work / "tune" / name / "results.parquet").to_pylist()
    final = {r["trial_id"]: r["status"] for r in rows}
    assert set(states) <= set(final) and len(final) == 4  # the same trials, none duplicated
    assert set(final.values()) == {"TERMINATED"}
    assert all(_attempts(work, name, t) == 1 for t in finished_before)  # finished trials not re-run
    assert _trial_states(storage, name) == final


# -- no Ray: trials/hour over restores, and the searcher fallback -------------------------------------
def _space():
    from grounding.config.search_space import parse_space

    return parse_space({"metric": "val_attribute_auc", "mode": "max", "num_samples": 4, "search_alg": "hyperopt",
                        "params": {"optim.lr": {"loguniform": [1e-3, 3e-2]}}})


def test_trials_per_hour_after_a_restore_counts_the_time_of_every_run(tmp_path):
    """4 trials finished in a 30-minute run that was killed, then a 60 s restore re-ran nothing:
    4 trials in 31 minutes (7.7/h), not 4 in 60 s (240/h)."""
    from grounding.distributed import tune_results as tr

    out, exp = tmp_path / "out", tmp_path / "exp"
    out.mkdir()
    exp.mkdir()
    assert tr.start_timing(out, exp, now=1000.0) == 0.0  # first run, then SIGKILL: no end recorded
    state = exp / "experiment_state-2026.json"
    state.write_text("{}")
    os.utime(state, (2800.0, 2800.0))  # Tune's last write before the kill
    assert tr.start_timing(out, exp, now=5000.0) == pytest.approx(1800.0)  # the restore
    tr.end_timing(out, now=5060.0)
    space = _space()
    hist = [{"epoch": 0, "val_attribute_auc": 0.6}]
    rows = [tr.trial_row(f"t{i}", tr.TERMINATED, {"optim.lr": 0.01}, hist, space, 1) for i in range(4)]
    summary = tr.summarise(rows, space, wall_s=60.0, prior_wall_s=1800.0)
    assert summary["trials_per_hour"] == pytest.approx(4 / 1860 * 3600, abs=0.1)
    assert summary["wall_s"] == 60.0 and summary["wall_s_all_runs"] == 1860.0
    assert tr.start_timing(out, exp, now=9000.0) == pytest.approx(1860.0)  # a second restore adds both


def test_hyperopt_runs_when_installed_else_the_documented_random_fallback(monkeypatch, caplog):
    from ray.tune.search import BasicVariantGenerator

    from grounding.distributed import tune as ray_tune

    try:
        import hyperopt  # noqa: F401
    except ImportError:
        installed = False
    else:
        installed = True
    if installed:
        from ray.tune.search.hyperopt import HyperOptSearch

        assert isinstance(ray_tune._search_alg(_space()), HyperOptSearch)
        monkeypatch.setitem(sys.modules, "hyperopt", None)  # then check the fallback too
    with caplog.at_level(logging.WARNING, logger="grounding.distributed.tune"):
        alg = ray_tune._search_alg(_space())
    assert isinstance(alg, BasicVariantGenerator)
    assert "search_alg hyperopt needs the hyperopt package" in caplog.text and "random search" in caplog.text


@pytest.mark.ray
@pytest.mark.slow
def test_a_raising_trial_is_retried_then_ends_error_while_the_others_finish(tmp_path):
    """Issue 17.2: max_failures=1, the first trial to start raises on every attempt (tests/tune_scenarios.py)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "tune_scenarios.py"), "raising-trial", str(tmp_path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    rows = {r["trial_id"]: r for r in result["rows"]}
    failed = [(tmp_path / "work" / "tune" / "raising" / "failing_trial.txt").read_text()]
    assert len(rows) == 3 and failed[0] in rows
    bad = rows[failed[0]]
    assert bad["status"] == "ERROR" and "injected failure" in bad["error"]
    assert _attempts(tmp_path / "work", "raising", failed[0]) == 2  # the first try + max_failures=1 retry
    others = [r for t, r in rows.items() if t != failed[0]]
    assert all(r["status"] == "TERMINATED" and r["epochs"] == 2 for r in others)
    assert result["summary"]["errored"] == 1 and result["summary"]["terminated"] == 2
    assert result["summary"]["best_trial"] in {r["trial_id"] for r in others} and result["best_yaml"]
    try:  # the scenario searches with hyperopt: the installed branch ran a real search end to end
        import hyperopt  # noqa: F401
    except ImportError:
        assert result["searcher"] == "BasicVariantGenerator"
    else:
        assert result["searcher"] == "HyperOptSearch"


def test_the_results_table_names_what_a_trial_raised_not_the_traceback_head():
    from ray.exceptions import RayTaskError

    from grounding.distributed.tune import _error_text

    try:
        raise RuntimeError("injected failure in trial abc")
    except RuntimeError as err:
        wrapped = RayTaskError("ImplicitFunc.train", "Traceback (most recent call last):\n  File ...\n" * 20, err)
    assert _error_text(wrapped) == "RuntimeError: injected failure in trial abc"
    assert _error_text(ValueError("plain")) == "ValueError: plain"
