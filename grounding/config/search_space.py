"""Search spaces for ``grounding tune``: parsing and validation, no Ray.

A space file (``tune_spaces/*.yaml``) maps dotted :class:`GroundingConfig` keys to distributions::

    metric: val_attribute_auc      # an epoch metric of grounding.model.engine (val_loss, val_attribute_auc, ...)
    mode: max                      # min | max
    num_samples: 8                 # trials
    search_alg: optuna             # optuna | hyperopt | random
    seed: 0
    max_failures: 1                # retries of a trial that raised (tune.FailureConfig)
    scheduler: {grace_period: 1, reduction_factor: 2}   # ASHA on training_iteration (= epochs)
    resources: {gpus_per_worker: 0.25, driver_cpus: 0.01, max_concurrent_trials: 0}
    fixed:                         # dotted overrides every trial gets (CLI --set still wins)
      optim.max_epochs: 6
    params:
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.roi_hidden: {choice: [32, 64, 128]}
      model.classifier_hidden: {choice: [[64], [128, 64]]}

Distributions (both ends inclusive): ``uniform [lo, hi]``, ``loguniform [lo, hi]``,
``quniform [lo, hi, q]``, ``randint [lo, hi]``, ``lograndint [lo, hi]``, ``choice [v, ...]``.
Every key is checked against the config before anything starts; errors name the file and the key.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from grounding.model import engine
from grounding.config import ConfigError, GroundingConfig, dotted_keys


class SearchSpaceError(ValueError):
    """A search-space file is wrong; the message names the file and the key."""


class SearchAlg(str, enum.Enum):
    OPTUNA = "optuna"  # TPE, learns from finished trials (needs the optuna package)
    HYPEROPT = "hyperopt"  # TPE via hyperopt (optional package)
    RANDOM = "random"  # Tune's BasicVariantGenerator


class Mode(str, enum.Enum):
    MIN = "min"
    MAX = "max"


# Epoch metrics a trial reports (grounding.model.engine.epoch_metrics) and the direction that is better.
METRICS: dict[str, Mode] = {
    engine.VAL_LOSS: Mode.MIN, engine.VAL_AUC: Mode.MAX, engine.VAL_TRIPLET: Mode.MIN, engine.VAL_BCE: Mode.MIN,
    engine.TRAIN_LOSS: Mode.MIN,
}
# Keys that change what a loss measures: a search over them must not be judged by that loss
# (a smaller triplet margin beta always gives a smaller triplet loss, whatever the model learnt).
_LOSS_SCALE_KEYS = {
    "loss.beta": {engine.VAL_LOSS, engine.VAL_TRIPLET, engine.TRAIN_LOSS},
    "loss.bce_weight": {engine.VAL_LOSS, engine.TRAIN_LOSS},
    "loss.use_classification": {engine.VAL_LOSS, engine.TRAIN_LOSS, engine.VAL_BCE, engine.VAL_AUC},
}
KINDS = ("uniform", "loguniform", "quniform", "randint", "lograndint", "choice")
_TOP_KEYS = {"description", "metric", "mode", "num_samples", "search_alg", "seed", "max_failures", "scheduler",
             "resources", "fixed", "params"}


@dataclass(frozen=True)
class Distribution:
    """One searched key. ``args``: (lo, hi) | (lo, hi, q) | the choice options."""

    kind: str
    args: tuple

    def sample(self, rng: np.random.Generator) -> Any:
        """One value, as Tune would draw it (used by tests and validation; Tune samples the real trials)."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        lo, hi = self.args[0], self.args[1]
        if self.kind == "uniform":
            return float(rng.uniform(lo, hi))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        if self.kind == "quniform":
            q = self.args[2]
            return float(min(max(round(rng.uniform(lo, hi) / q) * q, lo), hi))
        if self.kind == "randint":
            return int(rng.integers(lo, hi + 1))
        # lograndint: log-uniform on [lo, hi + 1), floored
        return int(min(max(math.floor(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))), lo), hi))

    def extremes(self) -> list[Any]:
        """Values that must all be valid for the config: both ends of a range, every choice."""
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]

    def is_log(self) -> bool:
        return self.kind in ("loguniform", "lograndint")


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA (time_attr = training_iteration = epochs); ``max_t`` 0 = the trial's optim.max_epochs."""

    max_t: int = 0
    grace_period: int = 1
    reduction_factor: float = 2.0
    enabled: bool = True


@dataclass(frozen=True)
class ResourceSpec:
    driver_cpus: float = 0.01  # the Tune trial runs only the Train driver
    gpus_per_worker: float = 0.25  # per Train worker, only when the cluster has GPUs (the head is small)
    max_concurrent_trials: int = 0  # 0 = as many as the cluster's CPUs/GPUs fit


@dataclass(frozen=True)
class SearchSpace:
    source: str
    metric: str
    mode: Mode
    num_samples: int
    params: dict[str, Distribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    search_alg: SearchAlg = SearchAlg.OPTUNA
    seed: int = 0
    max_failures: int = 1
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    description: str = ""

    def fixed_overrides(self) -> list[str]:
        """``fixed`` as ``key=value`` strings for ``load_config`` (JSON is YAML, so values round-trip)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.fixed.items()]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored next to the experiment, to refuse a changed space on restore)."""
        return {
            "metric": self.metric, "mode": self.mode.value, "num_samples": self.num_samples,
            "search_alg": self.search_alg.value, "seed": self.seed, "max_failures": self.max_failures,
            "scheduler": vars(self.scheduler), "resources": vars(self.resources), "fixed": dict(self.fixed),
            "params": {k: {d.kind: list(d.args)} for k, d in self.params.items()},
        }


# -- parsing ----------------------------------------------------------------------------------------
def _err(source: str, key: str, msg: str) -> SearchSpaceError:
    return SearchSpaceError(f"{source}: {key}: {msg}")


def _unknown_key(source: str, where: str, key: str, known: Mapping[str, Any]) -> SearchSpaceError:
    near = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return _err(source, f"{where}.{key}", f"unknown config key{hint}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_distribution(source: str, key: str, spec: Any, tp: Any) -> Distribution:
    where = f"params.{key}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise _err(source, where, f"expected one of {{{', '.join(KINDS)}: ...}}, got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        raise _err(source, where, f"unknown distribution '{kind}' (use one of {', '.join(KINDS)})")
    if not isinstance(args, list) or not args:
        raise _err(source, where, f"{kind} needs a non-empty list, got {args!r}")
    is_enum = isinstance(tp, type) and issubclass(tp, enum.Enum)
    if kind == "choice":
        if typing.get_origin(tp) is tuple and not all(isinstance(a, list) for a in args):
            raise _err(source, where, "this key is a list: choices must be lists, e.g. [[64], [128, 64]]")
        return Distribution(kind, tuple(tuple(a) if isinstance(a, list) else a for a in args))
    if tp not in (int, float) or is_enum:
        raise _err(source, where, f"{kind} needs a numeric key; use choice for {getattr(tp, '__name__', tp)}")
    want = 3 if kind == "quniform" else 2
    if len(args) != want or not all(_is_number(a) for a in args):
        raise _err(source, where, f"{kind} needs {want} numbers, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise _err(source, where, f"lower bound {lo} must be < upper bound {hi}")
    if kind in ("loguniform", "lograndint") and lo <= 0:
        raise _err(source, where, f"{kind} needs a lower bound > 0, got {lo}")
    if kind in ("randint", "lograndint"):
        if not all(isinstance(a, int) for a in args):
            raise _err(source, where, f"{kind} needs integer bounds, got {args!r}")
    elif tp is int:
        raise _err(source, where, f"{key} is an integer: use randint, lograndint or choice, not {kind}")
    if kind == "quniform" and args[2] <= 0:
        raise _err(source, where, f"quniform step must be > 0, got {args[2]}")
    return Distribution(kind, tuple(args))


def _sub(source: str, data: Any, name: str, cls: type) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise _err(source, name, "expected a mapping")
    known = {f for f in cls.__dataclass_fields__}
    for k in data:
        if k not in known:
            raise _err(source, f"{name}.{k}", f"unknown setting (known: {', '.join(sorted(known))})")
    return cls(**dict(data))


def parse_space(data: Mapping[str, Any], source: str = "<space>") -> SearchSpace:
    """Parse a space mapping; keys are checked against the config's dotted keys and field types."""
    if not isinstance(data, Mapping):
        raise SearchSpaceError(f"{source}: top level must be a mapping")
    for k in data:
        if k not in _TOP_KEYS:
            raise _err(source, str(k), f"unknown setting (known: {', '.join(sorted(_TOP_KEYS))})")
    keys = dotted_keys()
    params_in = data.get("params") or {}
    if not isinstance(params_in, Mapping) or not params_in:
        raise _err(source, "params", "needs at least one searched key")
    params = {}
    for key, spec in params_in.items():
        if key not in keys:
            raise _unknown_key(source, "params", key, keys)
        params[key] = _parse_distribution(source, key, spec, keys[key])
    fixed = dict(data.get("fixed") or {})
    for key in fixed:
        if key not in keys:
            raise _unknown_key(source, "fixed", key, keys)
        if key in params:
            raise _err(source, f"fixed.{key}", "is also searched in params")
    metric = str(data.get("metric", engine.VAL_LOSS))
    if metric not in METRICS:
        raise _err(source, "metric", f"'{metric}' is not an epoch metric ({', '.join(METRICS)})")
    try:
        mode = Mode(str(data.get("mode", METRICS[metric].value)))
        alg = SearchAlg(str(data.get("search_alg", SearchAlg.OPTUNA.value)))
    except ValueError as err:
        raise _err(source, "mode/search_alg", str(err)) from None
    if mode is not METRICS[metric]:
        raise _err(source, "mode", f"{metric} is better when {METRICS[metric].value}imised, not {mode.value}")
    for key in params:
        if metric in _LOSS_SCALE_KEYS.get(key, ()):
            raise _err(source, "metric", f"{metric} is not comparable across trials that search {key} "
                                         "(it changes the loss itself); use val_attribute_auc (max)")
    num_samples = data.get("num_samples", 8)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise _err(source, "num_samples", f"must be an integer >= 1, got {num_samples!r}")
    sched = _sub(source, data.get("scheduler"), "scheduler", SchedulerSpec)
    if sched.grace_period < 1 or sched.reduction_factor <= 1 or sched.max_t < 0:
        raise _err(source, "scheduler", "need grace_period >= 1, reduction_factor > 1, max_t >= 0")
    res = _sub(source, data.get("resources"), "resources", ResourceSpec)
    if res.driver_cpus <= 0 or res.gpus_per_worker < 0 or res.max_concurrent_trials < 0:
        raise _err(source, "resources", "need driver_cpus > 0 (Tune refuses 0), gpus_per_worker >= 0, "
                                        "max_concurrent_trials >= 0")
    return SearchSpace(
        source=source, metric=metric, mode=mode, num_samples=num_samples, params=params, fixed=fixed,
        search_alg=alg, seed=int(data.get("seed", 0)), max_failures=int(data.get("max_failures", 1)),
        scheduler=sched, resources=res, description=str(data.get("description", "")),
    )


def load_space(path: str | Path) -> SearchSpace:
    file = Path(path)
    if not file.is_file():
        raise SearchSpaceError(f"{path}: search space file not found")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"{path}: not valid YAML: {err}") from None
    return parse_space(data or {}, source=str(path))


# -- applying a sample --------------------------------------------------------------------------------
def encode_choice(value: Any) -> Any:
    """Tune/Optuna categorical options must be scalars: lists travel as JSON strings."""
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def decode_overrides(sampled: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled ``{dotted key: value}`` back to config values (JSON-string lists become lists)."""
    keys = dotted_keys()
    out = {}
    for key, value in sampled.items():
        if typing.get_origin(keys.get(key)) is tuple and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def apply_overrides(cfg: GroundingConfig, sampled: Mapping[str, Any]) -> GroundingConfig:
    """The trial's config: ``cfg`` with the sampled values (decoded); ConfigError names the key."""
    return cfg.with_overrides(decode_overrides(sampled))


def check_against_config(space: SearchSpace, cfg: GroundingConfig) -> None:
    """Every choice and both ends of every range must give a valid config (fails before Ray starts)."""
    for key, dist in space.params.items():
        for value in dist.extremes():
            try:
                apply_overrides(cfg, {key: encode_choice(value)})
            except ConfigError as err:
                raise _err(space.source, f"params.{key}", f"value {value!r} is invalid: {err}") from None
    if not cfg.train.num_workers >= 1:
        raise SearchSpaceError(f"{space.source}: train.num_workers must be >= 1 for tune (Ray Train local "
                               "mode does not forward metrics to Tune)")
    if cfg.train.mode.value != "cache":
        raise SearchSpaceError(f"{space.source}: tune trials read the shared ROI cache; set train.mode=cache")


# -- resources ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialResources:
    use_gpu: bool
    cpus_per_worker: float
    gpus_per_worker: float  # 0 on CPU clusters
    driver_cpus: float
    max_concurrent_trials: int


def plan_resources(res: ResourceSpec, num_workers: int, cpus_per_worker: float, use_gpu: bool,
                   cluster_cpus: float, cluster_gpus: float) -> TrialResources:
    """Per-trial resources and how many trials run at once on this cluster.

    GPUs are used (``gpus_per_worker`` of one per Train worker; fractional: the head is small) when
    the cluster has them; asking for ``train.use_gpu`` on a cluster without GPUs is an error.
    Concurrency = what the CPUs and GPUs fit, capped by ``max_concurrent_trials`` when set.
    """
    gpu = cluster_gpus > 0 and (use_gpu or res.gpus_per_worker > 0)
    if use_gpu and cluster_gpus <= 0:
        raise SearchSpaceError("train.use_gpu=true but the Ray cluster has no GPUs")
    gpw = (res.gpus_per_worker or 1.0) if gpu else 0.0
    trial_cpus = num_workers * cpus_per_worker + res.driver_cpus
    fits = int(math.floor(cluster_cpus / trial_cpus + 1e-9))
    if gpu:
        fits = min(fits, int(math.floor(cluster_gpus / (num_workers * gpw) + 1e-9)))
    if fits < 1:
        raise SearchSpaceError(
            f"one trial needs {trial_cpus:g} CPUs{f' and {num_workers * gpw:g} GPUs' if gpu else ''}; "
            f"the cluster has {cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs (lower train.cpus_per_worker)")
    if res.max_concurrent_trials:
        fits = min(fits, res.max_concurrent_trials)
    return TrialResources(gpu, cpus_per_worker, gpw, res.driver_cpus, fits)


def trial_run_id(trial_id: str) -> str:
    """The Train run of a trial is named after it, so a retried or restored trial resumes its run."""
    return f"train-{trial_id}"


__all__ = [
    "Distribution", "METRICS", "Mode", "ResourceSpec", "SchedulerSpec", "SearchAlg", "SearchSpace",
    "SearchSpaceError", "TrialResources", "apply_overrides", "check_against_config", "decode_overrides",
    "encode_choice", "load_space", "parse_space", "plan_resources", "trial_run_id",
]
