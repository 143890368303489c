"""(R) Ray adapters for the evaluation jobs: folds and per-method bootstraps as parallel tasks.

The work functions are the pure ones in ``grounding.evaluation.severity`` / ``grounding.evaluation.bootstrap``; this
module only fans them out, so results are identical to the in-process run (tested).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pyarrow as pa


def ray_map(fn: Callable[[Any], Any], items: Sequence[Any], num_cpus: float = 1.0) -> list[Any]:
    """``[fn(x) for x in items]`` with one Ray task per item, results in input order.

    Needs an initialised Ray (``grounding.distributed.runtime.init_ray``). Items travel by value, so keep
    them small (the severity folds are a few arrays of floats).
    """
    import ray

    remote = ray.remote(num_cpus=num_cpus)(fn)
    return ray.get([remote.remote(item) for item in items])


def severity_cv_ray(table: pa.Table, n_folds: int = 5, seed: int = 0) -> tuple[dict, pa.Table]:
    """``grounding.evaluation.severity.severity_cv`` with every (fold, column) as a Ray task."""
    from grounding.evaluation.severity import severity_cv

    return severity_cv(table, n_folds, seed, map_fn=ray_map)


def _localization_task(args: tuple) -> dict:
    from grounding.evaluation.bootstrap import localization_cis

    pred, gt, thresholds, top_k, n_resamples, confidence, seed = args
    return localization_cis(pred, gt, thresholds, top_k, n_resamples, confidence, seed)


def localization_cis_ray(methods: dict[str, Sequence], gt_boxes: Sequence, thresholds=(0.25, 0.5, 0.75),
                         top_k: int = 1, n_resamples: int = 1000, confidence: float = 0.95,
                         seed: int = 0) -> dict[str, dict]:
    """Table 1 rows ``{method: localization_cis(...)}``, one Ray task per method (same seed each,
    so every method is resampled on the same image sets, as a paired comparison needs)."""
    names = list(methods)
    args = [(methods[m], gt_boxes, tuple(thresholds), top_k, n_resamples, confidence, seed) for m in names]
    return dict(zip(names, ray_map(_localization_task, args)))
