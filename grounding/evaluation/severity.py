"""Severity cross-validation (paper Table 2): P(severe) / P(mild) against expert severity scores.

Input is a *severity table*, one row per image (``SEVERITY_COLUMNS``): ``image_id``, ``patient_id``,
``p_severe``, ``p_mild`` (classifier probabilities) and ``score`` (expert score normalised to
[0, 1], e.g. geographic extent / 8; null when the image has none).

Protocol (``severity_cv``):

1. Rows without a finite score are excluded and counted (``n_missing_score``).
2. Folds: K-fold grouped by patient (no patient in two folds). The patient groups are shuffled
   with ``seed`` (a permutation of group labels), then ``sklearn.model_selection.GroupKFold``
   balances fold sizes; the same seed gives the same folds on every machine and sklearn version.
   The SAME folds serve P(severe) and P(mild).
3. Fewer patients than K: K is reduced to the number of patients with a warning (recorded as
   ``folds_used`` and in ``warnings``); fewer than 2 patients raises ``ValueError``.
4. Per fold and per probability column (rows with a missing probability are excluded for that
   column and counted): a least-squares line ``score ~ a * p + b`` is fitted on the training folds
   and applied to the test fold. Metrics on the test fold:
   ``pearson_r``/``pearson_p`` and ``spearman_rho``/``spearman_p`` between the probability and the
   true score (sign kept: P(mild) is expected to correlate negatively), and ``r2``, ``mae``,
   ``mse`` of the linear prediction against the true score.
5. Undefined statistics are NaN, never a crash: a correlation is NaN when the test fold has fewer
   than ``MIN_CORRELATION_N`` rows or a constant probability or score; R^2 is NaN for a constant
   true score. Aggregation over folds is NaN-aware: ``mean``/``std`` (population std, ddof=0) over
   the valid folds only, with ``n_valid_folds`` per metric, so a NaN fold is never averaged as if
   it were valid.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
from scipy import stats

log = logging.getLogger(__name__)

PROBABILITY_COLUMNS = ("p_severe", "p_mild")
SEVERITY_COLUMNS = ("image_id", "patient_id", "p_severe", "p_mild", "score")
SEVERITY_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("patient_id", pa.string()), ("p_severe", pa.float64()),
    ("p_mild", pa.float64()), ("score", pa.float64()),
])
METRICS = ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "r2", "mae", "mse")
MIN_CORRELATION_N = 3  # with 2 points a correlation is always +-1: meaningless, reported as NaN


@dataclass(frozen=True)
class FoldTask:
    """One fold's data for one probability column (plain arrays: cheap to ship to a Ray task).

    Shapes: ``x_train``, ``y_train`` (n_train,); ``x_test``, ``y_test`` (n_test,).
    """

    fold: int
    column: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_index: np.ndarray  # row positions (in the scored table) of the test rows


def validate_severity_table(table: pa.Table, source: str = "severity table") -> pa.Table:
    """Check and cast a severity table to ``SEVERITY_SCHEMA`` (extra columns are dropped).

    Raises:
        ValueError: naming ``source`` and the missing columns, or probabilities outside [0, 1].
    """
    missing = [c for c in SEVERITY_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{source}: missing columns {missing} (needs {list(SEVERITY_COLUMNS)})")
    table = table.select(list(SEVERITY_COLUMNS)).cast(SEVERITY_SCHEMA)
    for col in PROBABILITY_COLUMNS:
        p = _as_float(table[col])
        bad = np.isfinite(p) & ((p < 0) | (p > 1))
        if bad.any():
            raise ValueError(f"{source}: column {col} has {int(bad.sum())} values outside [0, 1]")
    return table


def group_folds(groups: Sequence[str], n_folds: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Deterministic K-fold test indices grouped by ``groups`` (patients).

    Args:
        groups: (n,) group label per row.
        n_folds: requested K (>= 2).
        seed: shuffles the group labels before ``GroupKFold``.

    Returns:
        (list of test-index arrays, one per fold, sorted; warnings). K is reduced to the number
        of distinct groups when there are fewer (a warning says so).

    Raises:
        ValueError: ``n_folds < 2`` or fewer than 2 distinct groups.
    """
    from sklearn.model_selection import GroupKFold

    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    uniq, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    notes = []
    if len(uniq) < 2:
        raise ValueError(f"severity CV needs at least 2 patients with scores, got {len(uniq)}")
    if len(uniq) < n_folds:
        notes.append(f"only {len(uniq)} patients for {n_folds} folds: using {len(uniq)} folds")
        n_folds = len(uniq)
    # GroupKFold is deterministic given the labels; a seeded relabelling makes the fold layout
    # depend on the seed (ties in group size are broken by label order).
    perm = np.random.default_rng(seed).permutation(len(uniq))
    shuffled = perm[codes]
    folds = [np.sort(test) for _, test in GroupKFold(n_splits=n_folds).split(shuffled, groups=shuffled)]
    return folds, notes


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y ~ slope * x + intercept``; a constant ``x`` gives slope 0, intercept mean(y)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("cannot fit a line to 0 points")
    xc = x - x.mean()
    if float(xc @ xc) <= 1e-24 * max(1, len(x)):  # scipy refuses a constant x
        return 0.0, float(y.mean())
    fit = stats.linregress(x, y)
    return float(fit.slope), float(fit.intercept)


def _constant(v: np.ndarray) -> bool:
    return len(v) == 0 or bool(np.ptp(v) == 0)


def fold_metrics(x_test: np.ndarray, y_test: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Table 2 statistics on one test fold; NaN where undefined (module docstring, step 5).

    Args:
        x_test: (n,) probabilities.
        y_test: (n,) true normalised scores.
        y_pred: (n,) linear predictions of the score.
    """
    x, y, p = (np.asarray(a, dtype=np.float64) for a in (x_test, y_test, y_pred))
    out = {m: math.nan for m in METRICS}
    if len(y) == 0:
        return out
    err = p - y
    out["mae"] = float(np.abs(err).mean())
    out["mse"] = float((err**2).mean())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot > 0:
        out["r2"] = float(1.0 - (err**2).sum() / ss_tot)
    if len(y) >= MIN_CORRELATION_N and not _constant(x) and not _constant(y):
        with warnings.catch_warnings():  # scipy warns on near-constant input; we already checked
            warnings.simplefilter("ignore")
            r = stats.pearsonr(x, y)
            rho = stats.spearmanr(x, y)
        out["pearson_r"], out["pearson_p"] = float(r.statistic), float(r.pvalue)
        out["spearman_rho"], out["spearman_p"] = float(rho.statistic), float(rho.pvalue)
    return out


def evaluate_fold(task: FoldTask) -> dict:
    """Fit on the training part, predict the test part (a pure function; Ray runs it per fold).

    Returns:
        ``{"fold", "column", "slope", "intercept", "n_train", "n_test", <METRICS>,
        "test_index": list[int], "y_pred": list[float]}``.
    """
    if len(task.x_train) == 0:
        slope, intercept = math.nan, math.nan
        y_pred = np.full(len(task.x_test), math.nan)
        metrics = {m: math.nan for m in METRICS}
    else:
        slope, intercept = fit_line(task.x_train, task.y_train)
        y_pred = slope * np.asarray(task.x_test, dtype=np.float64) + intercept
        metrics = fold_metrics(task.x_test, task.y_test, y_pred)
    return {"fold": task.fold, "column": task.column, "slope": slope, "intercept": intercept,
            "n_train": int(len(task.x_train)), "n_test": int(len(task.x_test)), **metrics,
            "test_index": [int(i) for i in task.test_index], "y_pred": [float(v) for v in y_pred]}


def _as_float(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_pandas(), dtype=np.float64)


def make_fold_tasks(table: pa.Table, n_folds: int, seed: int,
                    columns: Sequence[str] = PROBABILITY_COLUMNS) -> tuple[list[FoldTask], dict]:
    """Split a severity table into fold tasks (module docstring, steps 1-4).

    Returns:
        (tasks: one per fold and column, info: counts, ``folds_used``, ``warnings``,
        ``scored`` = the rows with a score, in the order ``test_index`` refers to).
    """
    table = validate_severity_table(table)
    score = _as_float(table["score"])
    has_score = np.isfinite(score)
    scored = table.filter(pa.array(has_score))
    info: dict = {"n_rows": table.num_rows, "n_missing_score": int((~has_score).sum()),
                  "n_scored": scored.num_rows, "n_folds_requested": int(n_folds), "warnings": []}
    folds, notes = group_folds(scored["patient_id"].to_pylist(), n_folds, seed)
    info["warnings"] += notes
    for note in notes:
        log.warning("severity CV: %s", note)
    info["folds_used"] = len(folds)
    info["n_patients"] = len(set(scored["patient_id"].to_pylist()))
    info["scored"] = scored
    y = _as_float(scored["score"])
    tasks = []
    for column in columns:
        x = _as_float(scored[column])
        ok = np.isfinite(x)
        info[f"n_missing_{column}"] = int((~ok).sum())
        for k, test in enumerate(folds):
            in_test = np.zeros(len(y), dtype=bool)
            in_test[test] = True
            tr, te = ok & ~in_test, ok & in_test
            tasks.append(FoldTask(k, column, x[tr], y[tr], x[te], y[te], np.flatnonzero(te)))
    return tasks, info


def aggregate(values: Iterable[float]) -> dict[str, float]:
    """NaN-aware mean/std (ddof=0) over folds, with how many folds were valid."""
    v = np.asarray(list(values), dtype=np.float64)
    valid = v[np.isfinite(v)]
    return {"mean": float(valid.mean()) if len(valid) else math.nan,
            "std": float(valid.std()) if len(valid) else math.nan,
            "n_valid_folds": int(len(valid)), "n_nan_folds": int(len(v) - len(valid))}


def summarise(fold_results: list[dict], info: dict) -> dict:
    """Fold results (any order) -> the Table 2 result dict (JSON-ready except NaN, see report)."""
    order = {c: i for i, c in enumerate(PROBABILITY_COLUMNS)}  # Table 2 order: P(severe), P(mild)
    results = sorted(fold_results, key=lambda r: (order.get(r["column"], len(order)), r["column"], r["fold"]))
    out: dict = {"n_rows": info["n_rows"], "n_scored": info["n_scored"], "n_patients": info["n_patients"],
                 "n_missing_score": info["n_missing_score"], "folds_requested": info["n_folds_requested"],
                 "folds_used": info["folds_used"], "warnings": list(info["warnings"]), "columns": {}}
    for column in dict.fromkeys(r["column"] for r in results):
        rows = [r for r in results if r["column"] == column]
        out["columns"][column] = {
            "n_missing_probability": info.get(f"n_missing_{column}", 0),
            "metrics": {m: aggregate(r[m] for r in rows) for m in METRICS},
            "folds": [{k: r[k] for k in ("fold", "slope", "intercept", "n_train", "n_test", *METRICS)}
                      for r in rows],
        }
    return out


def out_of_fold_table(scored: pa.Table, fold_results: list[dict]) -> pa.Table:
    """Scored rows + ``fold`` (test fold index) + ``pred_<column>`` (out-of-fold linear prediction)."""
    n = scored.num_rows
    fold = np.full(n, -1, dtype=np.int64)
    preds: dict[str, np.ndarray] = {}
    for r in fold_results:
        idx = np.asarray(r["test_index"], dtype=np.int64)
        fold[idx] = r["fold"]
        preds.setdefault(f"pred_{r['column']}", np.full(n, math.nan))[idx] = r["y_pred"]
    table = scored.append_column("fold", pa.array(fold))
    for name, values in preds.items():
        table = table.append_column(name, pa.array(values))
    return table


def severity_cv(table: pa.Table, n_folds: int = 5, seed: int = 0,
                map_fn: Callable[[Callable, list], list] | None = None) -> tuple[dict, pa.Table]:
    """Run the whole protocol (module docstring) on a severity table.

    Args:
        table: severity table (``SEVERITY_COLUMNS``).
        n_folds: K.
        seed: fold shuffling seed.
        map_fn: ``map_fn(evaluate_fold, tasks) -> results``; default in-process. Ray passes
            ``grounding.distributed.tasks.ray_map`` to run folds as parallel tasks.

    Returns:
        (summary dict as ``summarise``, out-of-fold prediction table).
    """
    tasks, info = make_fold_tasks(table, n_folds, seed)
    results = list((map_fn or (lambda f, xs: [f(x) for x in xs]))(evaluate_fold, tasks))
    return summarise(results, info), out_of_fold_table(info["scored"], results)


def severity_table_from_manifest(manifest: pa.Table, probabilities: pa.Table) -> pa.Table:
    """Join model probabilities (``image_id``, ``p_severe``, ``p_mild``) with a manifest's
    ``patient_id`` and normalised ``severity`` into a severity table (inner join on image_id)."""
    for name, t, cols in (("manifest", manifest, ("image_id", "patient_id", "severity")),
                          ("probabilities", probabilities, ("image_id", "p_severe", "p_mild"))):
        missing = [c for c in cols if c not in t.column_names]
        if missing:
            raise ValueError(f"{name}: missing columns {missing}")
    left = manifest.select(["image_id", "patient_id", "severity"]).rename_columns(["image_id", "patient_id", "score"])
    right = probabilities.select(["image_id", "p_severe", "p_mild"])
    joined = left.join(right, "image_id", join_type="inner").sort_by("image_id")
    return validate_severity_table(joined, "manifest + probabilities")
