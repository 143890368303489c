"""Peak resident memory of this process and of every Ray worker on this machine, sampled."""

from __future__ import annotations

import threading
import time

import psutil


def _ray_and_own_rss(include_ray: bool = True) -> int:
    """RSS of this process, plus (``include_ray``) all its descendants.

    A local ``ray.init`` starts the GCS and the raylet as children of the driver, and every Ray worker
    is a child of the raylet, so the descendants are exactly this job's Ray processes; other Ray
    instances on the same machine are not counted.
    """
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True) if include_ray else ():
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakMemory:
    """Context manager: ``peak_bytes`` = the largest sum of driver + Ray worker RSS seen."""

    def __init__(self, interval_s: float = 0.25, include_ray: bool = True):
        self.interval_s = interval_s
        self.include_ray = include_ray
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _ray_and_own_rss(self.include_ray))
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self.baseline_bytes = _ray_and_own_rss(self.include_ray)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, _ray_and_own_rss(self.include_ray))

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20
