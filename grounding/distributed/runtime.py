"""(R) Starting or joining Ray. The only place the library decides how Ray is initialised."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray for this process.

    Idempotent. Local runs keep the dashboard on (Ray 2.60 Train V2 needs the State API to clean up
    trial placement groups) but bound to 127.0.0.1.
    """
    import ray

    from grounding.distributed.cluster_checks import check_auth_for_cluster

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    for warning in check_auth_for_cluster(address):
        log.warning("%s", warning)
    env = {"RAY_TRAIN_V2_ENABLED": "1"}
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:
        # address="local": always a new instance. Without it ray.init() joins whatever `ray start`
        # cluster /tmp/ray last recorded, even a dead one, and waits for it forever.
        ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       runtime_env={"env_vars": env}, log_to_driver=True)
        # Ray Train's placement-group cleaner and Tune's drivers look the cluster up by address; on a
        # machine with several local Ray instances they would otherwise refuse to guess.
        os.environ["RAY_ADDRESS"] = ctx.address_info["address"]


HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # ray/train/v2/_internal/constants.py


def set_report_poll(seconds: float) -> None:
    """How often Ray Train's controller polls its workers (``train.report_poll_s``).

    Each ``ray.train.report`` is a barrier that returns only after the controller's next poll, which
    Ray 2.60 does every 2 s: that wait was most of the per-epoch framework cost. Ray reads the variable
    from the driver's environment when ``fit()`` starts and passes it on to the controller and workers.
    """
    os.environ[HEALTH_CHECK_ENV] = repr(float(seconds))


def use_cpu_threads(threads: int) -> int:
    """Set torch's intra-op threads for this worker (at least 1); returns the count.

    Ray gives a task or actor OMP_NUM_THREADS = its reserved CPUs; the CPU extract-rois actor reserves
    1 CPU (so Ray Data's read tasks still find one on a small node) but runs ``detector.extract_threads``.
    """
    import torch

    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    return threads


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def is_multi_node() -> bool:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive")) > 1


def storage_path(work_dir: str, configured: str = "") -> str:
    """Ray Train/Tune storage: ``configured`` or ``<work_dir>/ray_storage``, made absolute.

    On a multi-node cluster a path only one node can see is refused with a message saying what to
    do (``grounding.distributed.cluster_checks.check_storage_path``).
    """
    from pathlib import Path

    from grounding.distributed.cluster_checks import check_storage_path

    path = configured or str(Path(work_dir) / "ray_storage")
    if "://" not in path:
        path = str(Path(path).absolute())
    import ray

    if ray.is_initialized():
        check_storage_path(path, is_multi_node())
    return path


def largest_node_cpus() -> float:
    """CPUs of the biggest alive node: a single worker can never be given more than this."""
    import ray

    return max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
