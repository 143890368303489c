"""What a search leaves behind, no Ray: the results table, the plot and the best config.

Outputs under ``<work_dir>/tune/<name>/``:

* ``results.csv`` / ``results.parquet``: one row per trial: ``trial_id``, ``status`` (TERMINATED |
  ERROR), ``epochs`` run, ``stopped_early`` (ASHA or early stopping ended it before ``optim.max_epochs``),
  the searched values (``param.<dotted key>``; lists as JSON), the last epoch's metrics
  (``final_<name>``), the best value of the search metric over the epochs (``best_<metric>``) and its epoch.
* ``metric_vs_params.png``: the search metric (last epoch) against each searched parameter.
* ``best.yaml``: the full GroundingConfig (base config + the best trial's values), which
  ``grounding train --config best.yaml`` accepts; ``best.json``: trial id, values, metric.

Trials are ranked by the search metric at their last epoch (Tune's ``scope="last"``), not by their
best epoch: on a small validation split the best epoch is mostly a lucky spike, which neither ASHA
(it compares trials at equal epochs) nor a retrain would see again.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa

from grounding.model import engine
from grounding.config import GroundingConfig
from grounding.config.search_space import SearchSpace, apply_overrides, encode_choice
from grounding.data.storage import atomic_write_text, write_table

FINAL_METRICS = (engine.VAL_LOSS, engine.VAL_AUC, engine.VAL_TRIPLET, engine.VAL_BCE, engine.TRAIN_LOSS)
TERMINATED, ERROR = "TERMINATED", "ERROR"


def read_history(run_dir: str | Path) -> list[dict]:
    """The epochs a trial's Train run wrote (``metrics.jsonl``; deduplicated across resumes by the worker)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_epoch(history: Sequence[Mapping[str, float]], metric: str, mode: str) -> tuple[float, int]:
    """(best finite value of ``metric``, its epoch); (nan, -1) when there is none."""
    vals = [(float(h[metric]), int(h[engine.EPOCH])) for h in history
            if metric in h and math.isfinite(float(h[metric]))]
    if not vals:
        return math.nan, -1
    return (min if mode == "min" else max)(vals, key=lambda v: v[0])


def trial_row(trial_id: str, status: str, sampled: Mapping[str, Any], history: Sequence[Mapping[str, float]],
              space: SearchSpace, max_epochs: int, error: str = "") -> dict[str, Any]:
    """One results-table row (flat scalars only, so CSV and Parquet hold the same thing)."""
    best, at = best_epoch(history, space.metric, space.mode.value)
    last = history[-1] if history else {}
    row: dict[str, Any] = {
        "trial_id": trial_id, "status": status, "epochs": len(history),
        "stopped_early": status == TERMINATED and len(history) < max_epochs,
    }
    for key in space.params:
        value = encode_choice(sampled.get(key)) if key in sampled else None
        row[f"param.{key}"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    for name in FINAL_METRICS:
        row[f"final_{name}"] = float(last[name]) if name in last else math.nan
    row[f"best_{space.metric}"] = best
    row["best_epoch"] = at
    row["error"] = error[:500]
    return row


def score_column(space: SearchSpace) -> str:
    """The column trials are ranked by: the search metric at the last epoch."""
    return f"final_{space.metric}"


def rank_rows(rows: Sequence[Mapping[str, Any]], space: SearchSpace) -> list[Mapping[str, Any]]:
    """Finished trials with a finite metric, best first (ties: trial id, so the order is stable)."""
    col = score_column(space)
    ok = [r for r in rows if r["status"] == TERMINATED and math.isfinite(float(r[col]))]
    sign = 1.0 if space.mode.value == "min" else -1.0
    return sorted(ok, key=lambda r: (sign * float(r[col]), r["trial_id"]))


def _table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    cols: dict[str, list] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, [])
    data = {k: [r.get(k) for r in rows] for k in cols}
    out = {}
    for k, vals in data.items():
        if any(isinstance(v, str) for v in vals) and not all(isinstance(v, str) or v is None for v in vals):
            vals = [None if v is None else str(v) for v in vals]  # mixed choice types: keep them readable
        out[k] = pa.array(vals)
    return pa.table(out)


def write_results(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[str, str]:
    """``results.csv`` and ``results.parquet`` (same rows, trial-id order), atomically."""
    rows = sorted(rows, key=lambda r: r["trial_id"])
    out = Path(out_dir)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    write_table(_table(rows), str(out / "results.parquet"))
    return str(out / "results.csv"), str(out / "results.parquet")


def write_best(base: GroundingConfig, best: Mapping[str, Any], sampled: Mapping[str, Any], space: SearchSpace,
               out_dir: str | Path) -> Path:
    """``best.yaml`` (full config: base + the best values) and ``best.json`` (what was chosen and why)."""
    out = Path(out_dir)
    cfg = apply_overrides(base, {k: encode_choice(v) for k, v in sampled.items()})
    atomic_write_text(out / "best.yaml", cfg.to_yaml())
    atomic_write_text(out / "best.json", json.dumps({
        "trial_id": best["trial_id"], "metric": space.metric, "mode": space.mode.value,
        "value": best[score_column(space)], "epochs": best["epochs"],
        "best_epoch_value": best[f"best_{space.metric}"], "best_epoch": best["best_epoch"],
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sampled.items()},
        "config_fingerprint": cfg.fingerprint(),
    }, indent=2, default=str))
    return out / "best.yaml"


def plot_metric_vs_params(rows: Sequence[Mapping[str, Any]], space: SearchSpace, path: str | Path) -> str:
    """One panel per searched key: the metric (last epoch) of each finished trial against its value."""
    from grounding.evaluation.figures import plt, save_figure  # Agg backend set there
    from matplotlib.ticker import NullFormatter

    keys = list(space.params)
    ncol = min(3, len(keys))
    nrow = math.ceil(len(keys) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    col = score_column(space)
    done = [r for r in rows if r["status"] == TERMINATED and math.isfinite(float(r[col]))]
    ranked = rank_rows(rows, space)
    best_id = ranked[0]["trial_id"] if ranked else None
    for ax, key in zip(axes.flat, keys):
        dist = space.params[key]
        xs = [r[f"param.{key}"] for r in done]
        ys = [float(r[col]) for r in done]
        if dist.kind == "choice":
            labels = [str(encode_choice(v)) for v in dist.args]
            pos = {lab: i for i, lab in enumerate(labels)}
            xs = [pos.get(str(x), -1) for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        elif dist.is_log():
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short log ranges
        ax.scatter(xs, ys, s=28, c="#3b82f6", alpha=0.8, edgecolors="none")
        for x, y, r in zip(xs, ys, done):
            if r["trial_id"] == best_id:
                ax.scatter([x], [y], s=90, facecolors="none", edgecolors="#ef4444", linewidths=1.6, label="best")
        ax.set_xlabel(key, fontsize=9)
        ax.set_ylabel(f"{space.metric} ({space.mode.value})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{Path(space.source).name}: {len(done)} finished trials of {len(rows)}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, str(path))


TIMING_FILE = "timing.json"


def start_timing(out_dir: str | Path, experiment_dir: str | Path, now: float) -> float:
    """Record this run's start; return the wall seconds the earlier runs of the experiment took.

    A restored search has only part of its trials finished in this run, so trials/hour needs the
    time of every run. An earlier run that was killed has no end recorded: it ended, at the latest,
    when Tune last wrote its experiment state.
    """
    path = Path(out_dir) / TIMING_FILE
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    if runs and runs[-1].get("end") is None:
        states = list(Path(experiment_dir).glob("experiment_state-*.json")) if "://" not in str(experiment_dir) else []
        runs[-1]["end"] = max([runs[-1]["start"]] + [f.stat().st_mtime for f in states])
    prior = sum(r["end"] - r["start"] for r in runs)
    atomic_write_text(path, json.dumps({"runs": runs + [{"start": now, "end": None}]}))
    return prior


def end_timing(out_dir: str | Path, now: float) -> None:
    path = Path(out_dir) / TIMING_FILE
    runs = json.loads(path.read_text())["runs"]
    runs[-1]["end"] = now
    atomic_write_text(path, json.dumps({"runs": runs}))


def summarise(rows: Sequence[Mapping[str, Any]], space: SearchSpace, wall_s: float,
              prior_wall_s: float = 0.0) -> dict[str, Any]:
    """Counts, best trial and trials/hour: finished trials over the wall time of every run of the
    search (``prior_wall_s``: the runs before a restore), not of this run alone."""
    ranked = rank_rows(rows, space)
    finished = sum(r["status"] == TERMINATED for r in rows)
    total = wall_s + prior_wall_s
    return {
        "trials": len(rows), "terminated": finished, "errored": sum(r["status"] == ERROR for r in rows),
        "stopped_early": sum(bool(r["stopped_early"]) for r in rows), "wall_s": round(wall_s, 1),
        "wall_s_all_runs": round(total, 1),
        "trials_per_hour": round(finished / total * 3600.0, 1) if total > 0 else None,
        "best_trial": ranked[0]["trial_id"] if ranked else None,
        score_column(space): ranked[0][score_column(space)] if ranked else None,
    }


__all__ = [
    "best_epoch", "plot_metric_vs_params", "rank_rows", "read_history", "score_column", "summarise", "trial_row",
    "write_best", "write_results",
]
