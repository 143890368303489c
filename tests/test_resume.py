"""Driver fault tolerance (reliability.md A5): SIGKILL the `train` job's driver, rerun it.

The same ``--run-id`` resumes at (last registered checkpoint + 1), read from the epoch counter in
metrics.jsonl and Ray's run snapshot, not from a log line (ray#46814); a new id starts at epoch 0.
Each driver runs in its own session with its own Ray temp dir (RAY_TMPDIR), so whatever the kill
leaves behind is found by that dir and ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from grounding.bench.train import synthetic_roi_table
from grounding.model.run_checks import SNAPSHOT_FILE
from grounding.data.storage import write_table

from helpers import write_test_vectors  # noqa: E402  (tests/ is on sys.path under pytest)
from test_fault_tolerance import _end_leftovers  # noqa: E402

MAX_EPOCHS = 5


def _driver(args: list[str], ray_tmp: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}  # the poll interval comes from train.report_poll_s
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "rayjobs.train", *args], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=Path(__file__).parents[1])


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (Ray workers have their own process group, not session)."""
    victims = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                victims.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def _snapshot_epochs(path: Path) -> list[int]:
    try:
        snap = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [int(r["metrics"]["epoch"]) for r in snap["checkpoint_results"]]


def _history(run_dir: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError):
        return []


def _inputs(tmp_path: Path, rows: int) -> tuple[Path, Path, Path]:
    """A synthetic ROI cache, test word vectors and a work dir under ``tmp_path``."""
    rois, wv, work = tmp_path / "rois.parquet", tmp_path / "wv", tmp_path / "work"
    write_table(synthetic_roi_table(rows, feature_dim=12), str(rois))
    write_test_vectors(wv)
    return rois, wv, work


def _common(rois: Path, wv: Path, work: Path, every: int) -> list[str]:
    return ["--rois", str(rois), "--word-vectors", str(wv), "--work-dir", str(work),
            "--set", "train.num_workers=1", "--set", "train.tensorboard=false",
            "--set", "optim.early_stop_patience=100", "--set", "optim.batch_size=32",
            "--set", "model.roi_hidden=16", "--set", "model.classifier_hidden=[16]",
            "--set", f"optim.max_epochs={MAX_EPOCHS}", "--set", f"train.checkpoint_every={every}"]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_killed_driver_resumes_with_the_same_run_id_and_a_new_id_starts_fresh(tmp_path):
    rois, wv, work = _inputs(tmp_path, rows=1200)
    common = _common(rois, wv, work, every=1)  # a checkpoint per epoch: resume at the last one + 1
    snapshot = work / "ray_storage" / "job-a" / SNAPSHOT_FILE
    tmps = [tempfile.mkdtemp(prefix="/tmp/rrs") for _ in range(3)]
    try:
        # 1. start, SIGKILL the driver once Ray has registered the first checkpoint
        first = _driver([*common, "--run-id", "job-a"], tmps[0], tmp_path / "run1.log")
        deadline = time.time() + 400
        while time.time() < deadline and not _snapshot_epochs(snapshot) and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        assert _snapshot_epochs(snapshot), "no checkpoint registered in time"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = time.time()
        _end_leftovers(tmps[0])  # the head goes down with the driver, as in a RayJob pod loss
        registered = _snapshot_epochs(snapshot)
        assert max(registered) < MAX_EPOCHS - 1, "the run finished before the kill"

        # 2. same run id: resumes at the last registered checkpoint + 1, finishes, no duplicates
        second = _driver([*common, "--run-id", "job-a"], tmps[1], tmp_path / "run2.log")
        assert second.wait(timeout=400) == 0, (tmp_path / "run2.log").read_text()[-3000:]
        hist = _history(work / "train" / "job-a")
        assert [h["epoch"] for h in hist] == list(range(MAX_EPOCHS))
        new = [h["epoch"] for h in hist if h["report_time"] > killed_at]
        assert new and new[0] == max(registered) + 1 and new == list(range(new[0], MAX_EPOCHS)), (registered, new)

        # 3. another run id: a fresh run from epoch 0, the first run's folder untouched
        before = snapshot.read_bytes()
        started = time.time()
        third = _driver([*common, "--run-id", "job-b", "--set", "optim.max_epochs=1"], tmps[2],
                        tmp_path / "run3.log")
        assert third.wait(timeout=400) == 0, (tmp_path / "run3.log").read_text()[-3000:]
        fresh = _history(work / "train" / "job-b")
        assert [h["epoch"] for h in fresh] == [0] and fresh[0]["report_time"] > started
        assert snapshot.read_bytes() == before
    finally:
        for t in tmps:
            _end_leftovers(t)
            shutil.rmtree(t, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_with_a_checkpoint_every_3_epochs_a_kill_after_epoch_4_resumes_at_epoch_3(tmp_path):
    """train.checkpoint_every=3: checkpoints after epochs 2, 5 and the last; epochs 3-4 are redone."""
    rois, wv, work = _inputs(tmp_path, rows=2400)
    epochs = 8
    common = [*_common(rois, wv, work, every=3), "--set", f"optim.max_epochs={epochs}", "--run-id", "job-k"]
    snapshot = work / "ray_storage" / "job-k" / SNAPSHOT_FILE
    run_dir = work / "train" / "job-k"
    tmps = [tempfile.mkdtemp(prefix="/tmp/rrs") for _ in range(2)]
    try:
        first = _driver(common, tmps[0], tmp_path / "run1.log")
        deadline = time.time() + 400
        while time.time() < deadline and len(_history(run_dir)) < 5 and first.poll() is None:
            time.sleep(0.02)
        # epoch 4 logged: the kill lands in epoch 5. The driver's whole session (driver, GCS, raylet, Train
        # controller, workers) at once: killing the driver alone left its Ray running until _end_leftovers,
        # and on a loaded machine the worker finished epoch 5 and saved that checkpoint first; the run then
        # rightly resumed after it (seen in CI).
        _kill_session(first.pid)
        first.wait()
        killed_at = time.time()
        _end_leftovers(tmps[0])
        before = [h["epoch"] for h in _history(run_dir)]
        registered = _snapshot_epochs(snapshot)
        assert before[:5] == [0, 1, 2, 3, 4], (tmp_path / "run1.log").read_text()[-3000:]
        assert registered == [2], (before, registered)  # metrics for 0-4, a checkpoint only after epoch 2

        second = _driver(common, tmps[1], tmp_path / "run2.log")
        assert second.wait(timeout=400) == 0, (tmp_path / "run2.log").read_text()[-3000:]
        hist = _history(run_dir)
        assert [h["epoch"] for h in hist] == list(range(epochs))  # exact count, epochs 3-4 not duplicated
        new = [h["epoch"] for h in hist if h["report_time"] > killed_at]
        assert new == list(range(3, epochs)), new  # resumed from the epoch-2 checkpoint
        assert _snapshot_epochs(snapshot)[-1] == epochs - 1  # the last epoch is always checkpointed
    finally:
        for t in tmps:
            _end_leftovers(t)
            shutil.rmtree(t, ignore_errors=True)
