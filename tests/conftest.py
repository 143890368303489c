"""Shared fixtures: the real-data folder (skips cleanly without it), a local Ray, an RNG guard."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(os.environ.get("GROUNDING_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real public samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def prevent_leaking_rng():
    """Tests must not change the global RNG state others see (torchvision's conftest)."""
    try:
        import torch
    except ImportError:  # the text tests also run in the medspaCy venv, which has no torch
        torch = None

    torch_state = torch.get_rng_state() if torch is not None else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    yield
    if torch is not None:
        torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the whole session (starting Ray costs ~5 s)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()



@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed Ray test also reports the machine's state (free disk, memory, Ray processes still alive):
    CI shows only the output, and a full /tmp or a leftover Ray from an earlier test explains a hang."""
    report = yield
    if report.failed and item.get_closest_marker("ray") is not None:
        import shutil

        import psutil

        ray_procs = []
        for p in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if "raylet" in cmd or "gcs_server" in cmd or cmd.startswith("ray::"):
                    ray_procs.append(f"{p.info['pid']} {cmd[:100]}")
            except psutil.Error:
                continue
        tmp = os.environ.get("RAY_TMPDIR", "/tmp")
        tmp = tmp if os.path.isdir(tmp) else "/tmp"
        disk = shutil.disk_usage(tmp)
        mem = psutil.virtual_memory()
        report.sections.append(("machine state", (
            f"free disk under {tmp}: {disk.free / 2**30:.1f} GiB; "
            f"memory available {mem.available / 2**30:.1f} of {mem.total / 2**30:.1f} GiB; "
            f"load {os.getloadavg()}; {len(ray_procs)} Ray processes:\n" + "\n".join(ray_procs[:40]))))
    return report
