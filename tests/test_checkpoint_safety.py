"""Checkpoint safety: pre-flight of a run folder, run ids on clusters, atomic saves, no unpickling.

Fast (no Ray started). The Ray-level resume/kill tests are in test_resume.py / test_fault_tolerance.py.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from grounding.model.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from grounding.config import GroundingConfig
from grounding.model.run_checks import SNAPSHOT_FILE, RunStateError, check_resume_state, require_run_id
from grounding.text.vocabulary import ATTRIBUTES
from helpers import write_test_vectors  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]


def _ckpt(folder: Path, epoch: int) -> Path:
    return save_checkpoint(folder, model_state={"w": torch.full((3,), float(epoch))}, config={"x": 1},
                           vocabulary=ATTRIBUTES, vocabulary_version="v", epoch=epoch)


def _run_folder(storage: Path, run_id: str = "r1", epochs: int = 2) -> Path:
    """A Ray-2.60-shaped run folder: two checkpoint dirs + checkpoint_manager_snapshot.json."""
    run = storage / run_id
    names = [f"checkpoint_2026-01-01_00-00-0{e}.000000" for e in range(epochs)]
    for e, name in enumerate(names):
        _ckpt(run / name, e)
    results = [{"version": 0, "checkpoint_dir_name": n, "metrics": {"epoch": e}} for e, n in enumerate(names)]
    snap = {"ray_version": "2.60.0", "checkpoint_results": results, "checkpoint_report_indices": list(range(epochs)),
            "latest_checkpoint_result": results[-1], "pending_training_results": [],
            "pending_validation_specs": [], "current_report_index": epochs, "validated_checkpoint_dir_names": [],
            "timed_out_validation_checkpoint_dir_names": [], "failed_validation_checkpoint_dir_names": []}
    (run / SNAPSHOT_FILE).write_text(json.dumps(snap))
    return run


# -- pre-flight of <storage>/<run_id> (reliability.md A6, A7) ---------------------------------------
def test_fresh_and_healthy_run_folders_pass(tmp_path):
    assert check_resume_state(str(tmp_path), "never-ran").fresh
    run = _run_folder(tmp_path)
    state = check_resume_state(str(tmp_path), "r1")
    assert not state.fresh and state.latest == sorted(p.name for p in run.glob("checkpoint_2*"))[-1]
    assert len(state.checkpoints) == 2


def test_truncated_snapshot_is_a_clear_error(tmp_path):
    run = _run_folder(tmp_path)
    snap = run / SNAPSHOT_FILE
    snap.write_bytes(snap.read_bytes()[: snap.stat().st_size // 2])  # crash during Ray's in-place write
    with pytest.raises(RunStateError, match="truncated or not valid JSON") as err:
        check_resume_state(str(tmp_path), "r1")
    msg = str(err.value)
    assert SNAPSHOT_FILE in msg and "new run id" in msg and str(run) in msg


def test_deleted_latest_checkpoint_is_a_clear_error(tmp_path):
    run = _run_folder(tmp_path)
    latest = sorted(run.glob("checkpoint_2*"))[-1]
    import shutil

    shutil.rmtree(latest)
    with pytest.raises(RunStateError, match="no longer exist") as err:
        check_resume_state(str(tmp_path), "r1")
    assert latest.name in str(err.value) and "new run id" in str(err.value)


@pytest.mark.parametrize("sidecar", [True, False])
def test_truncated_checkpoint_file_is_a_clear_error(tmp_path, sidecar):
    run = _run_folder(tmp_path)
    pt = sorted(run.glob("checkpoint_2*"))[-1] / CHECKPOINT_FILE
    if not sidecar:  # e.g. the detector's state file: no sidecar, the zip structure is checked
        Path(str(pt) + ".sha256").unlink()
    pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(RunStateError, match="truncated or corrupt") as err:
        check_resume_state(str(tmp_path), "r1")
    assert "Nothing was started" in str(err.value)


def test_run_training_checks_the_run_folder_before_fit(tmp_path):
    """The pre-flight runs inside run_training before any data is read or any worker starts."""
    from grounding.bench.train import synthetic_vectors
    from grounding.distributed.train import run_training

    work = tmp_path / "work"
    run = _run_folder(work / "ray_storage", "damaged")
    (run / SNAPSHOT_FILE).write_text('{"ray_version": "2.60.0", "checkpoint_res')
    cfg = GroundingConfig().with_overrides({"run.work_dir": str(work)})
    with pytest.raises(RunStateError, match="truncated"):
        run_training(cfg, str(tmp_path / "no-such-rois.parquet"), synthetic_vectors(8), run_id="damaged")


# -- a run id is required when joining a cluster (reliability.md A5) -------------------------------
def test_require_run_id_only_when_joining_a_cluster():
    require_run_id("train", "", None, env={})  # local: a fresh id is fine
    require_run_id("train", "x", "ray://head:10001", env={})
    with pytest.raises(RunStateError, match="--run-id"):
        require_run_id("train", "", "ray://head:10001", env={})
    with pytest.raises(RunStateError, match="resumes its checkpoints"):
        require_run_id("train", "  ", None, env={"RAY_ADDRESS": "10.0.0.1:6379"})


@pytest.mark.parametrize("via", ["flag", "env"])
def test_train_jobs_refuse_a_missing_run_id_on_a_cluster(tmp_path, monkeypatch, capsys, via):
    """No Ray is started: the jobs stop before init_ray (a bogus address would hang otherwise)."""
    from grounding.distributed import runtime as ray_runtime
    from rayjobs import train, train_detector

    def no_ray(*a, **k):  # without the guard the job would try to join the (bogus) cluster
        raise AssertionError("the job went on to start/join Ray without a run id")

    monkeypatch.setattr(ray_runtime, "init_ray", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    addr = ["--address", "127.0.0.1:1"] if via == "flag" else []
    if via == "env":
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    from test_bad_input import make_prepared, make_rois

    write_test_vectors(tmp_path / "wv")
    rc = train.main(["--rois", str(make_rois(tmp_path)), "--word-vectors", str(tmp_path / "wv"),
                     "--work-dir", str(tmp_path / "w"), *addr])
    assert rc == 2 and "no run id" in capsys.readouterr().err
    rc = train_detector.main(["--prepared", str(make_prepared(tmp_path)), "--out", str(tmp_path / "d"),
                              "--work-dir", str(tmp_path / "w"), *addr])
    assert rc == 2 and "no run id" in capsys.readouterr().err
    assert not (tmp_path / "w" / "train").exists()  # nothing was started


# -- checkpoints are never half-written (reliability.md C2) ----------------------------------------
def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Local-mode layout: epoch folders; a save that dies leaves epoch 0 the newest usable one."""
    from grounding.distributed.train import _latest_local_checkpoint

    root = tmp_path / "local_checkpoints"
    _ckpt(root / "epoch=00000", 0)
    good = (root / "epoch=00000" / CHECKPOINT_FILE).read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        real_save({"partial": torch.zeros(1)}, f)  # some bytes reach the temp file ...
        raise OSError("No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        _ckpt(root / "epoch=00001", 1)
    monkeypatch.setattr(torch, "save", real_save)
    assert not (root / "epoch=00001" / CHECKPOINT_FILE).exists()  # no half file under the final name
    assert not list(root.rglob("*.tmp*"))
    assert (root / "epoch=00000" / CHECKPOINT_FILE).read_bytes() == good
    state = _latest_local_checkpoint(root)
    assert state is not None and state["epoch"] == 0 and state["model"]["w"].tolist() == [0.0, 0.0, 0.0]
    # and a file overwritten in place by the failing save is still the old one
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        _ckpt(root / "epoch=00000", 0)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(root / "epoch=00000")["epoch"] == 0


# -- no unpickling of untrusted data (reliability.md C4) -------------------------------------------
_PICKLE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
                 ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"),
                 ("pandas", "read_pickle"), ("Word2Vec", "load"), ("KeyedVectors", "load")}


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Calls that can unpickle: ``torch.load`` without a literal ``weights_only=True``, ``pickle.load(s)``,
    ``np.load(allow_pickle=True)``, ``from pickle import load``, gensim ``.load`` and friends."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "cloudpickle", "dill"}:
            if any(a.name in {"load", "loads", "Unpickler"} for a in node.names):
                problems.append(f"{filename}:{node.lineno}: from {node.module} import load")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        call = (owner_name, node.func.attr)
        kw = {k.arg: k.value for k in node.keywords}
        if call == ("torch", "load"):
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                problems.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif call in _PICKLE_CALLS or node.func.attr == "Unpickler":
            problems.append(f"{filename}:{node.lineno}: {owner_name}.{node.func.attr}")
        elif call in {("np", "load"), ("numpy", "load")}:
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                problems.append(f"{filename}:{node.lineno}: np.load with allow_pickle")
    return problems


def test_lint_catches_unsafe_loads():
    bad = ("import torch, pickle, numpy as np\nfrom pickle import loads\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
           "gensim.models.Word2Vec.load(p)\n")
    assert len(unsafe_loads(bad)) == 6
    assert unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\n") == []


def test_no_unsafe_loads_in_library_and_jobs():
    problems = []
    for folder in ("grounding", "rayjobs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            problems += unsafe_loads(path.read_text(), str(path.relative_to(ROOT)))
    assert problems == []
