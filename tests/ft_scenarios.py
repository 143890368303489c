"""Fault-injection scenarios for Ray Train, run in a subprocess by test_fault_tolerance.py.

    python tests/ft_scenarios.py worker-kill OUT_DIR
    python tests/ft_scenarios.py node-kill OUT_DIR
    python tests/ft_scenarios.py detector-ddp-worker-kill OUT_DIR

Each scenario owns its Ray (own temp dir, so its processes and logs are told apart from any other
Ray on the machine and from the pytest process's session Ray), trains the grounding model on a tiny
synthetic ROI cache with a checkpoint per epoch (``train.checkpoint_every=1``), and from a watcher
thread kills something once
``min_epochs`` epochs are in ``metrics.jsonl`` (i.e. mid-way through the next epoch):

* ``worker-kill``: SIGKILL the RayTrainWorker process (single node).
* ``ddp-worker-kill``: two DDP workers (``train.num_workers=2``); first an unbroken reference run,
  then the same run again with one of the two workers SIGKILLed (rank 0 or 1, whichever is found
  first); ``weights_max_abs_diff`` compares the two final models.
* ``detector-ddp-worker-kill``: the same for ``train-detector`` (two DDP workers on a tiny blob-image
  set, a checkpoint per epoch); progress is the epochs of the registered checkpoints, and the two
  exported ``detector.pt`` files are compared.
* ``node-kill``: ``ray.cluster_utils.Cluster`` (head ``num_cpus=0`` + one 1-CPU worker node);
  ``remove_node(allow_graceful=False)`` on the node hosting the worker, then ``add_node`` a new one.

Writes ``OUT_DIR/result.json``: history, kill time, epochs done before the kill, pids, error.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import psutil

WORKER_NAME = "RayTrainWorker"


def _history(run_dir: Path) -> list[dict]:
    f = run_dir / "metrics.jsonl"
    try:
        return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def train_workers(raylet_pids: set[int]) -> list[psutil.Process]:
    """Alive RayTrainWorker processes whose parent is one of *our* raylets (never another Ray's)."""
    found = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        try:
            if p.info["ppid"] in raylet_pids and WORKER_NAME in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def raylets_under(temp_dir: str) -> dict[int, str]:
    """pid -> cmdline of raylet processes of the Ray whose session lives under ``temp_dir``."""
    out = {}
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "raylet" in (p.info["name"] or "") and temp_dir in cmd:
                out[p.info["pid"]] = cmd
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _cfg(work: Path, max_epochs: int, workers: int = 1):
    from grounding.config import GroundingConfig

    return GroundingConfig().with_overrides({
        "run.work_dir": str(work), "train.num_workers": workers, "train.cpus_per_worker": 1.0 if workers == 1 else 0.9,
        "train.max_failures": 2, "train.checkpoints_to_keep": 2, "train.tensorboard": False,
        "train.checkpoint_every": 1,  # these scenarios are about per-epoch resume
        "optim.max_epochs": max_epochs, "optim.early_stop_patience": 100, "optim.batch_size": 32,
        "model.roi_hidden": 16, "model.alpha_hidden": 8, "model.classifier_hidden": [16],
        "model.geometry_dim": 4,
    })


def _detector_cfg(work: Path, epochs: int):
    from grounding.config import GroundingConfig

    return GroundingConfig().with_overrides({
        "run.work_dir": str(work), "detector.num_workers": 2, "detector.cpus_per_worker": 1.0,
        "detector.fpn_channels": 16, "detector.batch_size": 4, "detector.optimizer": "adamw", "detector.lr": 1e-3,
        "detector.epochs": epochs, "detector.max_failures": 2, "detector.checkpoints_to_keep": epochs + 1,
        "train.checkpoint_every": 1,
    })


def checkpoint_epochs(run_storage: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train registered for a run (its snapshot in storage), in order."""
    from grounding.model.run_checks import SNAPSHOT_FILE

    try:
        snap = json.loads((run_storage / SNAPSHOT_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [int(r["metrics"]["epoch"]) for r in snap["checkpoint_results"]]


def _max_abs_diff(model_a: str, model_b: str) -> float:
    from grounding.model.checkpoint import load_checkpoint

    a, b = load_checkpoint(model_a)["model"], load_checkpoint(model_b)["model"]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _state_max_abs_diff(path_a: str, path_b: str) -> float:
    import torch

    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _watch_and_kill(epochs_done, min_epochs: int, kill, info: dict, deadline_s: float = 300) -> None:
    """Call ``kill(info)`` once ``epochs_done()`` lists ``min_epochs`` epochs."""
    end = time.time() + deadline_s
    try:
        while time.time() < end:
            done = epochs_done()
            if len(done) >= min_epochs:
                info["epochs_before_kill"] = list(done)
                info["kill_time"] = time.time()
                kill(info)
                return
            time.sleep(0.05)
        info["watch_error"] = "no checkpoint before the deadline"
    except Exception:  # noqa: BLE001 - reported to the test through result.json
        info["watch_error"] = traceback.format_exc()


def detector_ddp_kill(out: Path, temp_dir: str) -> dict:
    """Train the detector twice with two DDP workers, unbroken then with one worker SIGKILLed."""
    import ray

    from grounding.bench.rois import blob_prepared_table
    from grounding.data.storage import write_table
    from grounding.distributed.detector import run_train_detector

    prepared = out / "prepared"
    write_table(blob_prepared_table(16, 64, seed=5, split_fractions=(0.75, 0.25)), str(prepared / "p.parquet"))
    epochs = int(os.environ.get("FT_EPOCHS", "5"))
    cfg = _detector_cfg(out / "work", epochs)
    storage_root = out / "work" / "ray_storage"
    info: dict = {"scenario": "detector-ddp-worker-kill", "max_epochs": epochs}
    ctx = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True)
    os.environ["RAY_ADDRESS"] = ctx.address_info["address"]
    reference = run_train_detector(cfg, str(prepared), str(out / "det-reference"), "det-reference")
    info["reference"] = {"epoch": reference["epoch"], "detector": reference["detector"],
                         "checkpoint_epochs": checkpoint_epochs(storage_root / "det-reference")}

    def kill(i: dict) -> None:
        workers = train_workers(set(raylets_under(temp_dir)))
        i["workers_seen"] = len(workers)
        i["killed_pids"] = [w.pid for w in workers[:1]]  # one rank of two
        for pid in i["killed_pids"]:
            os.kill(pid, signal.SIGKILL)

    done: dict = {}

    def train() -> None:
        try:
            result = run_train_detector(cfg, str(prepared), str(out / "det"), "det")
            done.update(epoch=result["epoch"], detector=result["detector"])
        except Exception:  # noqa: BLE001 - reported through result.json
            done["error"] = traceback.format_exc()

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    _watch_and_kill(lambda: checkpoint_epochs(storage_root / "det"), 2, kill, info)
    trainer.join(timeout=float(os.environ.get("FT_FIT_TIMEOUT", "420")))
    info.update(done)
    if trainer.is_alive():
        info["error"] = "fit() did not return in time"
    info["checkpoint_epochs"] = checkpoint_epochs(storage_root / "det")
    if done.get("detector"):
        info["weights_max_abs_diff"] = _state_max_abs_diff(done["detector"], reference["detector"])
    return info


def main(scenario: str, out_dir: str) -> int:
    out = Path(out_dir)
    temp_dir = os.environ["FT_RAY_TMP"]
    import ray

    if scenario == "detector-ddp-worker-kill":
        info: dict = {"scenario": scenario}
        try:
            info = detector_ddp_kill(out, temp_dir)
        except Exception:  # noqa: BLE001
            info["error"] = traceback.format_exc()
        finally:
            (out / "result.json").write_text(json.dumps(info, default=str))
            ray.shutdown()
        return 0

    from grounding.bench.train import synthetic_roi_table, synthetic_vectors
    from grounding.distributed.train import run_training
    from grounding.data.storage import write_table

    rois = out / "rois.parquet"
    write_table(synthetic_roi_table(int(os.environ.get("FT_ROWS", "1500")), feature_dim=12), str(rois))
    max_epochs = int(os.environ.get("FT_EPOCHS", "6"))
    cfg = _cfg(out / "work", max_epochs, workers=2 if scenario == "ddp-worker-kill" else 1)
    run_id = f"ft-{scenario}"
    run_dir = out / "work" / "train" / run_id
    info: dict = {"scenario": scenario, "max_epochs": max_epochs}
    cluster = None
    try:
        if scenario in ("worker-kill", "ddp-worker-kill"):
            ctx = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=True)
            # Ray Train's placement-group cleaner looks the cluster up by address (several Rays run here)
            os.environ["RAY_ADDRESS"] = ctx.address_info["address"]
            if scenario == "ddp-worker-kill":
                reference = run_training(cfg, str(rois), synthetic_vectors(8), run_id=f"{run_id}-reference")
                info["reference"] = {"error": reference.error, "model_path": reference.model_path,
                                     "epochs": [h["epoch"] for h in reference.history]}
                if os.environ.get("FT_SECOND_REFERENCE") == "1":  # is an unbroken 2-worker run itself repeatable?
                    again = run_training(cfg, str(rois), synthetic_vectors(8), run_id=f"{run_id}-reference-2")
                    info["reference_pair_max_abs_diff"] = _max_abs_diff(again.model_path, reference.model_path)

            def kill(i: dict) -> None:
                workers = train_workers(set(raylets_under(temp_dir)))
                if scenario == "ddp-worker-kill":
                    i["workers_seen"] = len(workers)
                    workers = workers[:1]  # one rank of two: its peer must notice and the group restart
                i["killed_pids"] = [w.pid for w in workers]
                for w in workers:
                    os.kill(w.pid, signal.SIGKILL)
        elif scenario == "node-kill":
            from ray.cluster_utils import Cluster

            # Cluster records its address in $RAY_TMPDIR/ray/ray_current_cluster (not under temp_dir) and
            # fails when that folder does not exist yet, e.g. on a fresh RAY_TMPDIR
            os.makedirs(os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray"), exist_ok=True)
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir})
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            os.environ["RAY_ADDRESS"] = cluster.address
            ray.init(address=cluster.address, log_to_driver=True)

            def kill(i: dict) -> None:
                raylets = raylets_under(temp_dir)
                workers = train_workers(set(raylets))
                i["killed_pids"] = [w.pid for w in workers]
                host = {w.ppid() for w in workers}
                for node in list(cluster.worker_nodes):
                    if node.all_processes["raylet"][0].process.pid in host:
                        i["removed_node"] = node.node_id
                        cluster.remove_node(node, allow_graceful=False)
                cluster.add_node(num_cpus=1)  # capacity comes back, as a replacement node would
                i["added_back"] = True
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        done: dict = {}

        def train() -> None:  # fit() in a thread: Cluster.add_node must run in the main thread
            t0 = time.time()
            try:
                result = run_training(cfg, str(rois), synthetic_vectors(8), run_id=run_id)
                done.update(error=result.error, history=result.history, model_path=result.model_path)
            except Exception:  # noqa: BLE001
                done["error"] = traceback.format_exc()
            done["fit_seconds"] = round(time.time() - t0, 1)

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        _watch_and_kill(lambda: [h["epoch"] for h in _history(run_dir)], 2, kill, info)
        trainer.join(timeout=float(os.environ.get("FT_FIT_TIMEOUT", "420")))
        info.update(done)
        if trainer.is_alive():
            info["error"] = "fit() did not return in time"
        info["workers_after"] = [w.pid for w in train_workers(set(raylets_under(temp_dir)))]
        if scenario == "ddp-worker-kill" and done.get("model_path") and info["reference"]["model_path"]:
            info["weights_max_abs_diff"] = _max_abs_diff(done["model_path"], info["reference"]["model_path"])
    except Exception:  # noqa: BLE001
        info["error"] = traceback.format_exc()
    finally:
        (out / "result.json").write_text(json.dumps(info, default=str))
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
