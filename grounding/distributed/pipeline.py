"""(R) The whole method end to end on one Ray cluster (``grounding pipeline``).

synth (or datasets: real data by role, grounding.data.dataset_roles) ->
attributes -> prepare -> word vectors -> train detector -> extract ROIs -> train grounding
(with and without classification) -> evaluate -> severity CV. Every stage writes into
``<work_dir>/<stage>`` and finishes by writing ``_DONE.json`` there; a re-run skips finished stages,
so an interrupted pipeline continues where it stopped (``fresh=True`` redoes everything).

The two grounding variants train at the same time (two driver threads, two TorchTrainers) when the
cluster has the CPUs/GPUs for both, so their Ray Train start-ups and teardowns overlap; else one after
the other. ``pipeline.json`` records, per stage, ``wall_s`` and for the training stages the Ray Train
``startup_s`` (fit() start -> first epoch) and ``compute_s`` (train + validation seconds).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from grounding.data import storage
from grounding.config import GroundingConfig, replace, write_resolved

log = logging.getLogger(__name__)
DONE = "_DONE.json"


@dataclass
class PipelineState:
    cfg: GroundingConfig
    work: Path
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent in this run (0 = skipped)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # seconds each stage took when it ran
    stages: dict[str, dict] = field(default_factory=dict)  # wall_s / startup_s / compute_s when it ran
    outputs: dict[str, str] = field(default_factory=dict)
    concurrent: list[str] = field(default_factory=list)  # stages that ran side by side in this run

    def dir(self, stage: str) -> Path:
        return self.work / stage


def _stage(state: PipelineState, name: str, fn: Callable[[Path], dict], fresh: bool) -> dict:
    out = state.dir(name)
    marker = out / DONE
    if marker.exists() and not fresh:
        info = json.loads(marker.read_text())
        print(f"[pipeline] {name}: done already ({info.get('seconds', '?')} s), skipped", flush=True)
        state.timings[name] = 0.0
        state.stage_seconds[name] = float(info.get("seconds", 0.0))
        state.stages[name] = stage_clock(info)
        return info
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"[pipeline] {name} ...", flush=True)
    start = time.perf_counter()
    info = fn(out) or {}
    info["seconds"] = round(time.perf_counter() - start, 1)
    storage.atomic_write_text(marker, json.dumps(info, indent=2, default=str))
    state.timings[name] = state.stage_seconds[name] = info["seconds"]
    state.stages[name] = stage_clock(info)
    print(f"[pipeline] {name}: {info['seconds']} s", flush=True)
    return info


def stage_clock(info: dict) -> dict:
    """``wall_s``; for a Ray Train stage also ``startup_s``, ``compute_s`` and their ratio to the wall."""
    wall = float(info.get("seconds", 0.0))
    if "startup_s" not in info:
        return {"wall_s": wall, "startup_s": None, "compute_s": None}
    startup, compute = float(info["startup_s"]), float(info["compute_s"])
    ratio = round(wall / (startup + compute), 3) if startup + compute > 0 else None
    return {"wall_s": wall, "startup_s": round(startup, 1), "compute_s": round(compute, 1),
            "wall_over_startup_compute": ratio}


def room_for_concurrent(cfg: GroundingConfig, runs: int) -> bool:
    """Whether ``runs`` grounding trainings fit on the cluster's free CPUs/GPUs at once (Ray workers only:
    local mode trains in the driver process)."""
    import ray

    t = cfg.train
    if t.num_workers == 0:
        return False
    free = ray.available_resources()
    need_cpu = runs * t.num_workers * t.cpus_per_worker
    need_gpu = runs * t.num_workers if t.use_gpu else 0
    return free.get("CPU", 0.0) >= need_cpu and free.get("GPU", 0.0) >= need_gpu


def _side_by_side(jobs: list[Callable[[], dict]]) -> None:
    """Run ``jobs`` in threads; re-raise the first failure after all have ended."""
    errors: list[BaseException] = []

    def run(job: Callable[[], dict]) -> None:
        try:
            job()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def run_pipeline(cfg: GroundingConfig, fresh: bool = False) -> PipelineState:
    """Run every stage on the current Ray cluster; returns where everything went."""
    started = time.perf_counter()
    state = PipelineState(cfg=cfg, work=Path(cfg.run.work_dir).absolute())
    state.work.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, state.work)
    run_id = cfg.run.run_id or "pipeline"

    source = data_stage(cfg)  # "synth" (the simulator) or "datasets" (real data by role)
    make_source = _datasets if source == "datasets" else _synth
    _stage(state, source, lambda out: make_source(cfg, out), fresh)
    _stage(state, "attributes", lambda out: _attributes(state.dir(source) / "manifest.parquet", out), fresh)
    _stage(state, "prepared", lambda out: _prepare(cfg, state.dir("attributes") / "manifest.parquet", out), fresh)
    _stage(state, "word_vectors", lambda out: _word_vectors(cfg, state.dir("attributes") / "manifest.parquet", out),
           fresh)
    _stage(state, "detector", lambda out: _train_detector(cfg, state.dir("prepared"), out, f"{run_id}-detector"),
           fresh)
    _stage(state, "rois", lambda out: _extract_rois(cfg, state.dir("prepared"), state.dir("detector"), out), fresh)
    detector_file = state.dir("detector") / "detector.pt"
    detector_cfg = replace(cfg.detector, weights_path=str(detector_file),
                           weights_sha256=_read_sha(detector_file)) if detector_file.exists() else cfg.detector
    jobs = {}
    for name, with_cls in (("grounding", True), ("grounding_no_cls", False)):
        # The model's config records the frozen detector (path + sha256): predict needs only the model file.
        variant = replace(cfg, loss=replace(cfg.loss, use_classification=with_cls), detector=detector_cfg)
        jobs[name] = lambda v=variant, n=name: _stage(state, n, lambda out: _train_grounding(
            v, state.dir("rois"), state.dir("word_vectors"), out, f"{run_id}-{n}"), fresh)
    todo = [n for n in jobs if fresh or not (state.dir(n) / DONE).exists()]
    if len(todo) > 1 and room_for_concurrent(cfg, len(todo)):
        print(f"[pipeline] {' and '.join(todo)} side by side", flush=True)
        state.concurrent = todo
        _side_by_side([jobs[n] for n in todo])
    for name in jobs:  # the rest in order (a finished one is skipped again, which records its clock)
        if name not in state.concurrent:
            jobs[name]()
    _stage(state, "evaluation", lambda out: _evaluate(cfg, state, out), fresh)
    _stage(state, "severity", lambda out: _severity(cfg, state, out), fresh)
    storage.atomic_write_text(state.work / "pipeline.json",
                              json.dumps({"timings_s": state.timings, "total_s": sum(state.timings.values()),
                                          "stage_seconds": state.stage_seconds,
                                          "stages_total_s": round(sum(state.stage_seconds.values()), 1),
                                          "wall_s": round(time.perf_counter() - started, 1),
                                          "stages": state.stages, "concurrent": state.concurrent,
                                          "skipped": [k for k, v in state.timings.items() if v == 0.0]},
                                         indent=2))
    return state


def data_stage(cfg: GroundingConfig) -> str:
    """The first stage's name: ``datasets`` when the config names real roots, else ``synth``."""
    return "datasets" if cfg.datasets.is_real() else "synth"


def _read_sha(path: Path) -> str:
    sidecar = Path(f"{path}.sha256")
    return sidecar.read_text().split()[0] if sidecar.exists() else ""


# -- stages -------------------------------------------------------------------------------------
def _synth(cfg: GroundingConfig, out: Path) -> dict:
    from grounding.data.adapters.synthetic import synthetic_manifest
    from grounding.synth import generate
    from grounding.synth.contact import contact_sheet

    summary = generate(cfg.synth, str(out))
    manifest = synthetic_manifest(str(out), cfg.data.split_fractions, cfg.data.split_seed)
    storage.write_table(manifest, str(out / "manifest.parquet"))
    if cfg.synth.contact_per_site > 0:
        contact_sheet(str(out), cfg.synth.contact_per_site)
    return {"images": summary["images"], "rows": manifest.num_rows}


def _datasets(cfg: GroundingConfig, out: Path) -> dict:
    from grounding.data.dataset_roles import role_manifest

    manifest, counts = role_manifest(cfg)
    storage.write_table(manifest, str(out / "manifest.parquet"))
    return {"rows": manifest.num_rows, "counts": counts}


def _attributes(manifest_path: Path, out: Path) -> dict:
    from grounding.text.reports import annotate_manifest

    table = annotate_manifest(storage.read_table(str(manifest_path)))
    storage.write_table(table, str(out / "manifest.parquet"))
    positive = sum(table.column("pneumonia_positive").to_pylist())
    return {"rows": table.num_rows, "pneumonia_positive_reports": positive}


def _prepare(cfg: GroundingConfig, manifest_path: Path, out: Path) -> dict:
    from grounding.data.prepare import PrepareOptions
    from grounding.distributed.prepare import run_prepare

    options = PrepareOptions(cfg.data.image_size, cfg.data.max_pixels, cfg.data.low_percentile,
                             cfg.data.high_percentile)
    return run_prepare(storage.read_table(str(manifest_path)), str(out), options, cfg.data.batch_size,
                       cfg.data.rows_per_shard, engine=cfg.data.engine)


def _word_vectors(cfg: GroundingConfig, manifest_path: Path, out: Path) -> dict:
    from grounding.distributed import text as ray_text
    from grounding.text import word_vectors
    from grounding.data.dataset_roles import corpus_texts

    w = cfg.word_vectors
    texts = corpus_texts(cfg, str(manifest_path))
    table = word_vectors.run(texts, str(out), vector_size=w.vector_size, window=w.window, min_count=w.min_count,
                             epochs=w.epochs, seed=w.seed, skip_gram=w.skip_gram, negative_rule=w.negative_rule,
                             min_reports=w.min_reports,
                             tokenize=lambda t: ray_text.tokenize_texts(t, batch_size=w.batch_size))
    print(word_vectors.format_table(table), flush=True)
    return {"reports": len(texts)}


def _train_detector(cfg: GroundingConfig, prepared: Path, out: Path, run_id: str) -> dict:
    from grounding.distributed.detector import run_train_detector

    metrics = run_train_detector(cfg, str(prepared), str(out), run_id)
    # incl. startup_s and compute_s (pipeline.json's stage clock)
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def _extract_rois(cfg: GroundingConfig, prepared: Path, detector: Path, out: Path) -> dict:
    from grounding.distributed.detector import run_extract_rois

    return run_extract_rois(cfg, str(prepared), str(detector / "detector.pt"), str(out))


def _train_grounding(cfg: GroundingConfig, rois: Path, word_vectors_dir: Path, out: Path, run_id: str) -> dict:
    from grounding.distributed.train import run_training
    from grounding.text.word_vectors import load_attribute_vectors

    vectors = load_attribute_vectors(str(word_vectors_dir))
    result = run_training(cfg, str(rois), vectors, run_id=run_id)
    if result.error:
        raise RuntimeError(f"grounding training {run_id} failed: {result.error}")
    shutil.copy2(result.model_path, out / "model.pt")
    for sidecar in Path(result.model_path).parent.glob("model.pt.*"):
        shutil.copy2(sidecar, out / sidecar.name)
    history = Path(result.run_dir) / "metrics.jsonl"
    if history.exists():
        shutil.copy2(history, out / "metrics.jsonl")
    last = result.history[-1] if result.history else {}
    return {"run_id": run_id, "epochs": len(result.history), "fit_seconds": round(result.fit_seconds, 1),
            **{k: v for k, v in last.items() if isinstance(v, (int, float))},
            "startup_s": round(result.startup_s, 2), "compute_s": round(result.compute_s, 2)}


def _evaluate(cfg: GroundingConfig, state: PipelineState, out: Path) -> dict:
    from grounding.evaluation.run import EvalSettings
    from grounding.distributed.evaluate import run_evaluation_ray

    metrics = run_evaluation_ray(
        str(state.dir("rois")), str(state.dir("grounding") / "model.pt"), str(out),
        EvalSettings.from_config(cfg.eval),
        checkpoint_no_cls=str(state.dir("grounding_no_cls") / "model.pt"), prepared=str(state.dir("prepared")),
        histories=[str(state.dir(n) / "metrics.jsonl") for n in ("grounding", "grounding_no_cls")],
        manifest=str(state.dir("attributes") / "manifest.parquet"))
    print(f"[pipeline] Table 1: {_table1_line(metrics)}", flush=True)
    return {"report": str(out / "report.md"), "counts": metrics.get("counts", {})}


def _table1_line(metrics: dict) -> str:
    """One line per method: hit rates at each IoU threshold, for the progress output."""
    parts = []
    for method, cells in metrics.get("localization", {}).items():
        rates = [f"{v['estimate'] * 100:.0f}%" for k, v in cells.items() if isinstance(v, dict) and "estimate" in v]
        parts.append(f"{method} {'/'.join(rates)}")
    return "; ".join(parts)


def _severity(cfg: GroundingConfig, state: PipelineState, out: Path) -> dict:
    from grounding.data.adapters.covid import covid_manifest
    from grounding.model.predict import predict_probabilities
    from grounding.distributed.tasks import severity_cv_ray
    from grounding.evaluation.report import write_severity_outputs
    from grounding.evaluation.severity import severity_table_from_manifest

    if cfg.datasets.is_real():
        from grounding.data.dataset_roles import severity_manifest

        manifest, counts = severity_manifest(cfg)
    else:
        site_c = state.dir("synth") / "site_c"
        manifest, counts = covid_manifest(str(site_c), str(site_c / "severity.csv"), "score", 8.0,
                                          split_fractions=cfg.data.split_fractions, split_seed=cfg.data.split_seed)
    probabilities = predict_probabilities(manifest, str(state.dir("grounding") / "model.pt"), cfg,
                                          str(state.dir("detector") / "detector.pt"))
    table = severity_table_from_manifest(manifest, probabilities)
    summary, oof = severity_cv_ray(table, n_folds=cfg.eval.folds, seed=cfg.eval.seed)
    write_severity_outputs(str(out), summary, oof)
    return {"images": counts["rows"], "with_severity": counts["with_severity"]}
