"""Fault tolerance of training: a killed worker, a lost node, NaN losses (reliability.md A1, A2, C1).

The kill scenarios run in a subprocess (tests/ft_scenarios.py) with their own Ray, so the health
check interval can be lowered for the whole Ray (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``) and every
process they start is found again (by its temp dir) and ended if something is left behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import torch

HERE = Path(__file__).resolve().parent


def _end_leftovers(marker: str) -> list[int]:
    """SIGKILL processes of *our* scenario Ray (their command line names our unique temp dir)."""
    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or []):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in mine:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in mine]


def run_scenario(name: str, out: Path, timeout_s: int, **env: str) -> dict:
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rft")  # short: Ray's unix socket paths are length-limited
    full_env = {**os.environ, "FT_RAY_TMP": ray_tmp, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
                "RAY_TRAIN_V2_ENABLED": "1", **env}
    full_env.pop("RAY_ADDRESS", None)  # never join the pytest session's Ray
    log = out / "scenario.log"
    try:
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, str(HERE / "ft_scenarios.py"), name, str(out)], env=full_env,
                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        _end_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result = out / "result.json"
    assert result.exists(), log.read_text()[-4000:]
    return json.loads(result.read_text())


def assert_resumed_after_kill(info: dict) -> int:
    """The guarantees after a kill; returns the epoch training resumed at."""
    assert info.get("watch_error") is None, info.get("watch_error")
    assert info.get("error") is None, info.get("error")
    assert info["killed_pids"], "nothing was killed"
    epochs = [h["epoch"] for h in info["history"]]
    n = info["max_epochs"]
    assert epochs == list(range(n)), epochs  # right count, strictly increasing, no repeats
    last_before = max(info["epochs_before_kill"])
    after = [h["epoch"] for h in info["history"] if h["report_time"] > info["kill_time"]]
    assert after, "the kill came after training had finished"
    resumed_at = after[0]
    # Resumed from the last registered checkpoint: at most one checkpoint period is redone (Ray may
    # not have registered the newest checkpoint when the worker died), never a restart from 0.
    assert last_before <= resumed_at <= last_before + 1, (last_before, resumed_at)
    assert after == list(range(resumed_at, n))
    from grounding.model.checkpoint import load_checkpoint

    assert load_checkpoint(info["model_path"])["epoch"] == n - 1
    return resumed_at


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(540)
def test_sigkill_of_the_train_worker_resumes_from_the_last_checkpoint(tmp_path):
    info = run_scenario("worker-kill", tmp_path, timeout_s=500)
    assert_resumed_after_kill(info)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_losing_the_worker_node_resumes_on_a_new_node(tmp_path):
    # one machine: every Cluster node sees the same disk, so the local storage path is shared
    info = run_scenario("node-kill", tmp_path, timeout_s=560, GROUNDING_SHARED_FS="1")
    assert info.get("removed_node") and info.get("added_back"), info
    assert_resumed_after_kill(info)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_sigkill_of_one_ddp_worker_resumes_both_and_ends_with_the_unbroken_runs_weights(tmp_path):
    """Issue 17.1: two DDP workers, one SIGKILLed mid-epoch; an unbroken run with the same seed is the reference."""
    info = run_scenario("ddp-worker-kill", tmp_path, timeout_s=840)
    assert info["reference"]["error"] is None and info["reference"]["epochs"] == list(range(info["max_epochs"]))
    assert info["workers_seen"] == 2 and len(info["killed_pids"]) == 1
    assert_resumed_after_kill(info)
    metric_lines = (tmp_path / "work" / "train" / "ft-ddp-worker-kill" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metric_lines] == list(range(info["max_epochs"]))  # no duplicate
    # model, optimizer, RNG and shuffle order are restored from the checkpoint, and gloo's 2-rank all-reduce
    # is deterministic on CPU: the resumed run ends where the unbroken one did
    assert info["weights_max_abs_diff"] == 0.0


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_sigkill_of_one_detector_ddp_worker_resumes_and_ends_with_the_unbroken_runs_weights(tmp_path):
    """Issue 17.1 for ``train-detector``: two DDP workers, one SIGKILLed after two checkpoints."""
    info = run_scenario("detector-ddp-worker-kill", tmp_path, timeout_s=840)
    assert info.get("watch_error") is None and info.get("error") is None, info
    n = info["max_epochs"]
    assert info["reference"]["epoch"] == n - 1 and info["reference"]["checkpoint_epochs"] == list(range(n))
    assert info["workers_seen"] == 2 and len(info["killed_pids"]) == 1
    assert len(info["epochs_before_kill"]) < n, "the kill came after training had finished"
    assert "[train-detector] resumed from epoch" in (tmp_path / "scenario.log").read_text()  # a restart, from a checkpoint
    # one registered checkpoint per epoch, in order: a restart from 0 or a redone epoch would repeat one
    assert info["epoch"] == n - 1 and info["checkpoint_epochs"] == list(range(n))
    # augmentation and batch order are drawn from (seed, epoch, rank); model, optimizer and schedule are restored
    assert info["weights_max_abs_diff"] == 0.0


# -- NaN / Inf losses (reliability.md C1) ------------------------------------------------------------
def _finite(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return bool(torch.isfinite(obj).all()) if obj.is_floating_point() else True
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def _inject_nan(monkeypatch, every: int) -> dict:
    """Make the training loss NaN on every ``every``-th training step (eval steps untouched)."""
    from grounding.model import engine
    from grounding.model.losses import LossParts

    real = engine.output_loss
    calls = {"train": 0, "nan": 0}

    def loss(*args, **kwargs):
        parts = real(*args, **kwargs)
        if not torch.is_grad_enabled():
            return parts
        calls["train"] += 1
        if calls["train"] % every == 0:
            calls["nan"] += 1
            return LossParts(total=parts.total * float("nan"), triplet=parts.triplet, bce=parts.bce)
        return parts

    monkeypatch.setattr(engine, "output_loss", loss)
    return calls


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_nan_steps_are_skipped_and_never_checkpointed_then_a_nan_streak_stops_the_run(tmp_path, ray_local,
                                                                                        monkeypatch):
    """Local mode (the loop runs in this process, so the loss can be patched): isolated NaN steps are
    skipped and counted; a streak stops the run naming the batch; no saved state has a NaN in it."""
    from grounding.bench.train import synthetic_roi_table, synthetic_vectors
    from grounding.model.checkpoint import load_checkpoint
    from grounding.config import GroundingConfig
    from grounding.distributed.train import run_training
    from grounding.data.storage import write_table

    rois = tmp_path / "rois.parquet"
    write_table(synthetic_roi_table(160, feature_dim=12), str(rois))
    cfg = GroundingConfig().with_overrides({
        "run.work_dir": str(tmp_path / "work"), "train.num_workers": 0, "train.tensorboard": False,
        "optim.max_epochs": 3, "optim.batch_size": 16, "optim.lr": 0.01, "model.roi_hidden": 8,
        "model.classifier_hidden": [8], "optim.early_stop_patience": 100, "train.max_failures": 0,
        "train.checkpoint_every": 1,  # every saved state is checked for NaNs
    })
    calls = _inject_nan(monkeypatch, every=3)
    res = run_training(cfg, str(rois), synthetic_vectors(8), run_id="nan-run")
    assert res.error is None and [h["epoch"] for h in res.history] == [0, 1, 2]
    assert calls["nan"] >= 3 and sum(h["skipped_steps"] for h in res.history) == calls["nan"]
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    local = Path(res.storage_path) / "nan-run" / "local_checkpoints"
    saved = sorted(local.glob("epoch=*"))
    assert [p.name for p in saved] == ["epoch=00001", "epoch=00002"]
    before = {p.name: (p / "checkpoint.pt").read_bytes() for p in saved}
    for p in saved:
        state = load_checkpoint(p)
        assert _finite(state["model"]) and _finite(state["optimizer"]) and _finite(state["best_model"])
    assert _finite(load_checkpoint(res.model_path)["model"])

    # every step NaN: the resumed run stops in its first new epoch, naming the batch's image ids
    monkeypatch.undo()
    _inject_nan(monkeypatch, every=1)
    try:
        err = run_training(cfg.with_overrides({"optim.max_epochs": 4}), str(rois), synthetic_vectors(8),
                           run_id="nan-run").error
    except Exception as raised:  # noqa: BLE001 - local mode may raise instead of returning the error
        err = str(raised)
    assert err and "consecutive non-finite losses" in err and "image ids: [" in err
    assert {p.name: (p / "checkpoint.pt").read_bytes() for p in sorted(local.glob("epoch=*"))} == before
    hist = [json.loads(line) for line in (Path(res.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
