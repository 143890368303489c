"""One job per work dir / run id: grounding.data.locks and the CLI jobs that hold it (issue 17.5)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grounding.data.locks import FolderLock, LockHeldError, exclusive, work_dir_lock_path

ROOT = Path(__file__).resolve().parents[1]


def _write_lock(path: Path, host: str, pid: int, command: str = "grounding pipeline") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "2026-01-01T00:00:00Z", "command": command}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / "run" / ".grounding.lock"
    with exclusive(path, "work dir run", "grounding pipeline"):
        with pytest.raises(LockHeldError) as err:
            FolderLock(path, "work dir run", "grounding train").acquire()
    message = str(err.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert "grounding pipeline" in message and "work dir run is in use" in message


def test_released_on_exit_and_on_exception(tmp_path):
    path = tmp_path / "lock"
    with exclusive(path, "x", "a"):
        assert path.exists()
    assert not path.exists()
    with pytest.raises(RuntimeError, match="boom"):
        with exclusive(path, "x", "a"):
            raise RuntimeError("boom")
    assert not path.exists()
    with exclusive(path, "x", "b"):  # free again
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "lock"
    _write_lock(path, socket.gethostname(), _dead_pid())
    with exclusive(path, "x", "grounding train") as lock:
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["command"] == "grounding train"
        assert lock.path == path
    assert not path.exists()


def _hold(path: str, ready) -> None:
    with exclusive(path, "x", "grounding pipeline"):
        ready.set()
        time.sleep(300)  # killed by the test (an mp.Event wait killed mid-way would deadlock the parent)


def test_a_live_process_in_another_process_is_refused_then_killed_is_taken_over(tmp_path):
    path = tmp_path / "lock"
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(path), ready))
    proc.start()
    try:
        assert ready.wait(60)
        with pytest.raises(LockHeldError, match=f"pid {proc.pid} "):
            FolderLock(path, "x", "b").acquire()
        proc.kill()  # SIGKILL: no release; the OS drops its flock
        proc.join(30)
        assert path.exists()
        with exclusive(path, "x", "b"):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(30)


def _contend(path: str, barrier, results) -> None:
    barrier.wait(30)
    try:
        with exclusive(path, "x", "c"):
            results.put(("won", os.getpid()))
            time.sleep(1.5)  # hold while the others try
    except LockHeldError:
        results.put(("refused", os.getpid()))


def test_concurrent_takeover_of_a_stale_lock_has_exactly_one_winner(tmp_path):
    path = tmp_path / "lock"
    _write_lock(path, socket.gethostname(), _dead_pid())
    ctx = mp.get_context("fork")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(str(path), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = [results.get(timeout=5)[0] for _ in range(n)]
    assert outcomes.count("won") == 1, outcomes
    assert outcomes.count("refused") == n - 1


def test_lock_of_another_host_is_alive_while_its_heartbeat_is_fresh(tmp_path):
    path = tmp_path / "lock"
    _write_lock(path, "other-node-7", 12345)
    with pytest.raises(LockHeldError, match="pid 12345 on host other-node-7.*heartbeat"):
        FolderLock(path, "x", "b", stale_after_s=300).acquire()
    old = time.time() - 301
    os.utime(path, (old, old))  # the other host stopped touching it 5 min ago
    with exclusive(path, "x", "b", stale_after_s=300):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_heartbeat_touches_the_lock_file(tmp_path):
    path = tmp_path / "lock"
    with exclusive(path, "x", "a", heartbeat_s=0.05):
        old = time.time() - 1000
        os.utime(path, (old, old))
        deadline = time.monotonic() + 30
        while path.stat().st_mtime < time.time() - 500 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > time.time() - 500


def test_release_never_deletes_a_lock_taken_over_by_another(tmp_path):
    path = tmp_path / "lock"
    lock = FolderLock(path, "x", "a").acquire()
    os.unlink(path)  # e.g. an operator removed it, and another job took the folder
    with exclusive(path, "x", "b"):
        lock.release()
        assert json.loads(path.read_text())["command"] == "b"


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_second_pipeline_on_the_same_work_dir_is_refused(tmp_path):
    """The CLI path: the lock is taken before Ray starts, so the refusal is one line, exit 2."""
    work = tmp_path / "runs" / "x"
    with exclusive(work_dir_lock_path(work), f"work dir {work}", "grounding pipeline"):
        result = _run(["rayjobs.pipeline", "--work-dir", str(work)], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"work dir {work} is in use by pid {os.getpid()}" in lines[0]


def test_second_training_on_the_same_run_id_is_refused(tmp_path):
    """`grounding train --run-id` holds <storage>/<run_id>.lock; the refusal names the holder."""
    from grounding.data.locks import run_lock_path

    from test_bad_input import make_rois, make_word_vectors

    rois, wv = make_rois(tmp_path), make_word_vectors(tmp_path)
    storage = tmp_path / "runs" / "default" / "ray_storage"
    with exclusive(run_lock_path(str(storage), "r1", tmp_path), "run id r1", "grounding train"):
        result = _run(["rayjobs.train", "--rois", str(rois), "--word-vectors", str(wv), "--run-id", "r1"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "in use by pid" in lines[0] and "grounding train" in lines[0]
