"""(R) Ray Tune adapter: a search over the grounding model, each trial one Ray Train V2 run.

Pattern (Ray 2.60, Train V2; ``Tuner(trainer)`` is gone): the Tune trial is a function that builds
and fits the :func:`grounding.distributed.train.run_training` TorchTrainer with ``TuneReportCallback``, so
every epoch's ``ray.train.report`` reaches Tune and ASHA (``training_iteration`` = epochs).

* Trials read the shared ROI cache (``train.mode=cache``): the frozen detector never runs again.
* The Train run of a trial is named ``train-<trial_id>`` in ``<storage>/<name>-trials``: a retried
  trial (``tune.FailureConfig``) or a restored one resumes its own run from its last checkpoint.
* The same ``--name`` again restores the experiment (``Tuner.restore``): finished trials are not
  re-run, unfinished ones resume; a changed space or base config is refused (use a new name).
* A trial that raises ends ERROR (after ``max_failures`` retries); the others go on.
* Concurrency and per-trial resources come from the cluster (``search_space.plan_resources``).
  Caveat (Ray): ASHA's rung state is not restored, resumed trials count iterations from 1 again.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounding.config import GroundingConfig
from grounding.config.search_space import (
    SearchAlg, SearchSpace, SearchSpaceError, TrialResources, apply_overrides, check_against_config,
    decode_overrides, encode_choice, plan_resources, trial_run_id,
)
from grounding.data.storage import atomic_write_text
from grounding.distributed import tune_results as tr

log = logging.getLogger(__name__)
_TRIAL_ID = re.compile(r"^trial_fn_([0-9a-f]{5,8}(?:_\d{5})?)_")  # Tune's trial folder name


@dataclass
class SearchOutcome:
    out_dir: str
    experiment_path: str
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    best_yaml: str = ""
    restored: bool = False


def _log_attempt(run_dir: Path, trial_id: str) -> None:
    """Append one line per start of a trial (audit trail: shows which trials a restore re-ran)."""
    path = run_dir / "attempts.jsonl"
    old = path.read_text() if path.exists() else ""
    atomic_write_text(path, old + json.dumps({"trial_id": trial_id, "started": time.time()}) + "\n")


def trial_fn(config: dict, context: dict) -> None:
    """Tune trial = Train driver. ``config["overrides"]``: the sampled ``{dotted key: value}``."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from grounding.distributed.train import run_training
    from grounding.text.word_vectors import load_attribute_vectors

    trial_id = ray.tune.get_context().get_trial_id()
    run_id = trial_run_id(trial_id)
    cfg = apply_overrides(GroundingConfig.from_dict(context["base"]), config["overrides"])
    if context["use_gpu"]:
        cfg = cfg.with_overrides({"train.use_gpu": True})
    _log_attempt(Path(cfg.run.work_dir) / "train" / run_id, trial_id)
    vectors = load_attribute_vectors(context["word_vectors"])
    result = run_training(cfg, context["rois"], vectors, run_id=run_id, callbacks=[TuneReportCallback()],
                          gpus_per_worker=context["gpus_per_worker"] or 1.0)
    if result.error:
        raise RuntimeError(f"trial {trial_id}: training failed: {result.error}")


def _param_space(space: SearchSpace) -> dict:
    from ray import tune

    out = {}
    for key, d in space.params.items():
        a = d.args
        if d.kind == "choice":
            out[key] = tune.choice([encode_choice(v) for v in a])
        elif d.kind == "uniform":
            out[key] = tune.uniform(a[0], a[1])
        elif d.kind == "loguniform":
            out[key] = tune.loguniform(a[0], a[1])
        elif d.kind == "quniform":
            out[key] = tune.quniform(a[0], a[1], a[2])
        elif d.kind == "randint":
            out[key] = tune.randint(a[0], a[1] + 1)  # Tune's upper bound is exclusive, ours inclusive
        else:
            out[key] = tune.lograndint(a[0], a[1] + 1)
    return {"overrides": out}


def _search_alg(space: SearchSpace):
    """The searcher; a missing optional package says so and falls back to random search."""
    if space.search_alg is SearchAlg.OPTUNA:
        try:
            import optuna  # noqa: F401
            from ray.tune.search.optuna import OptunaSearch

            import optuna.samplers

            return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=space.seed))
        except ImportError as err:
            log.warning("search_alg optuna needs the optuna package (pip install optuna>=3): %s; "
                        "falling back to random search", err)
    elif space.search_alg is SearchAlg.HYPEROPT:
        try:
            import hyperopt  # noqa: F401
            from ray.tune.search.hyperopt import HyperOptSearch

            return HyperOptSearch(random_state_seed=space.seed)
        except ImportError as err:
            log.warning("search_alg hyperopt needs the hyperopt package (pip install hyperopt): %s; "
                        "falling back to random search", err)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=space.seed)


def _check_same_experiment(out_dir: Path, space: SearchSpace, cfg: GroundingConfig) -> None:
    """A restore must use the space and base config it started with (Tune cannot change them).

    The stored ``base.yaml`` is read through today's config, so a field added to the config since
    (with its default) is not a change; a different value of an existing key is, and is named.
    """
    from grounding.config import dotted_keys, load_config

    space_file, base_file = out_dir / "space.json", out_dir / "base.yaml"
    now = json.loads(json.dumps(space.to_dict(), default=str))  # as stored: tuples become lists
    if not space_file.exists():
        atomic_write_text(space_file, json.dumps(now, indent=2))
        atomic_write_text(base_file, cfg.to_yaml())
        return
    if json.loads(space_file.read_text()) != now:
        raise SearchSpaceError(f"experiment {out_dir.name} was started with another search space "
                               f"({space_file}); restore it unchanged or use a new --name")
    old = load_config(str(base_file)).to_dict()
    new = cfg.to_dict()
    changed = [k for k in dotted_keys() if _get(old, k) != _get(new, k)]
    if changed:
        raise SearchSpaceError(f"experiment {out_dir.name} was started with another base config "
                               f"({base_file}): {', '.join(changed)} differ; restore it unchanged or use a new --name")


def _get(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _trial_id_of(result: Any) -> str:
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return str(tid)
    m = _TRIAL_ID.search(Path(str(result.path)).name)
    return m.group(1) if m else Path(str(result.path)).name


def _error_text(error: BaseException) -> str:
    """``Type: message`` of what the trial raised. Ray wraps it in a RayTaskError whose text starts with
    the remote traceback, so the results table (500 characters) showed the traceback's head, not why."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def _rows(results, space: SearchSpace, runs_dir: Path, max_epochs: int) -> list[dict]:
    rows = []
    for result in results:
        tid = _trial_id_of(result)
        sampled = decode_overrides(((result.config or {}).get("overrides")) or {})
        status = tr.ERROR if result.error else tr.TERMINATED
        history = tr.read_history(runs_dir / trial_run_id(tid))
        err = "" if not result.error else _error_text(result.error)
        rows.append(tr.trial_row(tid, status, sampled, history, space, max_epochs, err))
    return rows


def run_search(space: SearchSpace, cfg: GroundingConfig, rois: str, word_vectors: str, name: str, *,
               retry_errored: bool = False) -> SearchOutcome:
    """Run (or restore) the search ``name``; write the results table, plot and best config.

    The Tune driver runs in a zero-CPU Ray task whose runtime env carries ``RAY_ADDRESS``: Ray
    Train's placement-group cleaner (spawned under each trial) looks its cluster up by address, and
    on a machine with several Ray instances it otherwise fails, so the workers' placement group of a
    trial that ASHA stopped is never freed and the next trials wait forever.

    Args:
        space: parsed search space. cfg: base config (``fixed`` of the space and CLI ``--set`` applied).
        rois: ROI cache (Parquet file or folder). word_vectors: folder of ``grounding word-vectors``.
        name: experiment name; the same name again restores it.
        retry_errored: on restore, also resume trials that had ended ERROR.
    Returns:
        :class:`SearchOutcome` (rows as in ``tune_results.trial_row``; summary with wall time, trials/hour).
    """
    import ray

    check_against_config(space, cfg)  # fail here, before any task starts
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    task = ray.remote(num_cpus=0, max_retries=0, runtime_env={"env_vars": env})(_run_search_here)
    return ray.get(task.remote(space, cfg, rois, word_vectors, name, retry_errored))


def _run_search_here(space: SearchSpace, cfg: GroundingConfig, rois: str, word_vectors: str, name: str,
                     retry_errored: bool) -> SearchOutcome:
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    from grounding.distributed.runtime import cluster_cpus, cluster_gpus, storage_path

    work_dir = Path(cfg.run.work_dir).absolute()
    storage = storage_path(str(work_dir), cfg.run.storage_path)
    out_dir = work_dir / "tune" / name
    exp_path = f"{storage.rstrip('/')}/{name}"
    _check_same_experiment(out_dir, space, cfg)
    plan: TrialResources = plan_resources(space.resources, cfg.train.num_workers, cfg.train.cpus_per_worker,
                                          cfg.train.use_gpu, float(ray.cluster_resources().get("CPU", 0)),
                                          float(cluster_gpus()))
    log.info("search %s: %d trials, %d at once, %s per trial (cluster %d CPUs, %d GPUs)", name,
             space.num_samples, plan.max_concurrent_trials, plan, cluster_cpus(), cluster_gpus())
    _abs = lambda p: p if "://" in p else str(Path(p).absolute())  # noqa: E731
    trial_base = cfg.with_overrides({"run.work_dir": str(out_dir), "run.run_id": "",
                                     "run.storage_path": f"{storage.rstrip('/')}/{name}-trials",
                                     "train.cpus_per_worker": plan.cpus_per_worker})
    context = {"base": trial_base.to_dict(), "rois": _abs(rois), "word_vectors": _abs(word_vectors),
               "use_gpu": plan.use_gpu, "gpus_per_worker": plan.gpus_per_worker}
    trainable = ray.tune.with_resources(ray.tune.with_parameters(trial_fn, context=context),
                                        {"cpu": plan.driver_cpus})
    restored = ray.tune.Tuner.can_restore(exp_path)
    if restored:
        print(f"[grounding.tune] restoring experiment {name} from {exp_path}", flush=True)
        tuner = ray.tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=retry_errored)
    else:
        max_t = space.scheduler.max_t or cfg.optim.max_epochs
        scheduler = None
        if space.scheduler.enabled:
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                                      grace_period=min(space.scheduler.grace_period, max_t),
                                      reduction_factor=space.scheduler.reduction_factor)
        tuner = ray.tune.Tuner(
            trainable, param_space=_param_space(space),
            tune_config=ray.tune.TuneConfig(
                metric=space.metric, mode=space.mode.value, search_alg=_search_alg(space), scheduler=scheduler,
                num_samples=space.num_samples, max_concurrent_trials=plan.max_concurrent_trials),
            run_config=ray.tune.RunConfig(
                name=name, storage_path=storage,
                failure_config=ray.tune.FailureConfig(max_failures=space.max_failures)),
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    prior_wall = tr.start_timing(out_dir, exp_path, time.time())
    t0 = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - t0
    tr.end_timing(out_dir, time.time())
    rows = _rows(results, space, out_dir / "train", cfg.optim.max_epochs)
    outcome = SearchOutcome(out_dir=str(out_dir), experiment_path=exp_path, rows=rows, restored=restored)
    tr.write_results(rows, out_dir)
    tr.plot_metric_vs_params(rows, space, out_dir / "metric_vs_params.png")
    ranked = tr.rank_rows(rows, space)
    if ranked:
        best = ranked[0]
        sampled = next(decode_overrides(((r.config or {}).get("overrides")) or {})
                       for r in results if _trial_id_of(r) == best["trial_id"])
        outcome.best_yaml = str(tr.write_best(cfg, best, sampled, space, out_dir))
    outcome.summary = tr.summarise(rows, space, wall, prior_wall)
    atomic_write_text(out_dir / "summary.json", json.dumps(outcome.summary, indent=2, default=str))
    return outcome


__all__ = ["SearchOutcome", "run_search", "trial_fn"]
