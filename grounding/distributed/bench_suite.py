"""(R) ``grounding bench all``: every benchmark at 1x and 4x the data, one JSON and one Markdown table.

Each section measures its stage side by side at each size factor, on data of a finished
``grounding pipeline`` work dir (the same images, ROI cache and detector the README's main job made),
replicated ``k`` times with fresh image ids. Peak memory is the largest RSS of this process plus all
its descendants (the local Ray instance included) while the stage ran.

Sections: ``ingest`` (Ray Data prepare vs a one-process loop), ``rois`` (ROI extraction), ``train``
(Ray Train vs a plain loop), ``streaming`` (epoch time, cache vs detector-in-the-loop), ``tune``
(trials/hour), ``e2e`` (the pipeline of the smoke profile, synthetic counts x k). With ``ray=False``
only the Ray-free parts run (ROI extraction, the plain training loop): what a GPU box without Ray
can measure.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from grounding.data import storage
from grounding.config import GroundingConfig, load_config
from grounding.bench.memory import PeakMemory
from grounding.model.predict import resolve_device

log = logging.getLogger(__name__)
SECTIONS = ("ingest", "rois", "train", "streaming", "tune", "e2e")
RAY_FREE = ("rois", "train")
# What each section reads from the pipeline's work dir.
NEEDS = {"ingest": ("attributes/manifest.parquet",), "rois": (), "train": ("rois", "word_vectors"),
         "streaming": ("rois", "word_vectors", "prepared", "detector/detector.pt"),
         "tune": ("rois", "word_vectors"), "e2e": ()}


@dataclass(frozen=True)
class SuiteOptions:
    work_dir: str  # a finished ``grounding pipeline`` work dir
    out_dir: str
    sizes: tuple[int, ...] = (1, 4)
    sections: tuple[str, ...] = SECTIONS
    epochs: int = 3  # per streaming-vs-cache run (steady state = epochs after the first)
    train_epochs: int = 8  # per Ray-Train-vs-plain run: cache epochs are ~0.1 s, so take several
    rois_images: int = 32  # ROI-extraction images at 1x
    tune_space: str = "tune_spaces/smoke.yaml"
    tune_trials: int = 4
    tune_epochs: int = 2
    e2e_profile: str = "smoke"
    ray: bool = True  # False: Ray-free sections only (ROI extraction, plain training loop)
    device: str = "auto"  # rois / plain loop: "cpu", "cuda" or "auto"


@dataclass
class Row:
    """One line of the table: a measured quantity at every size factor."""

    name: str
    unit: str
    values: dict[int, float]
    peak_mib: dict[int, float]
    higher_is_better: bool = True
    note: str = ""
    scales: bool = True  # False: ratios and fixed costs, for which "linear in the data" means nothing

    def growth(self) -> float | None:
        """Throughput at the largest size over the smallest (>= 1 = linear or better); times: the inverse."""
        if not self.scales or len(self.values) < 2:
            return None
        lo, hi = min(self.values), max(self.values)
        if not self.values[lo] or not self.values[hi]:
            return None
        scale = hi / lo
        ratio = self.values[hi] / self.values[lo]
        return ratio if self.higher_is_better else scale / ratio


def machine_info(device: str) -> dict[str, Any]:
    import os

    import psutil

    info = {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "device": device,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    return info


def _measure(fn: Callable[[], dict], include_ray: bool = True) -> tuple[dict, float]:
    with PeakMemory(include_ray=include_ray) as mem:
        out = fn()
    return out, round(mem.peak_mib)


def replicate_rows(table: pa.Table, factor: int) -> pa.Table:
    from grounding.distributed.bench_ingest import replicate_manifest

    return table if factor == 1 else replicate_manifest(table, factor)


def _replicated_file(table: pa.Table, factor: int, folder: Path, name: str) -> str:
    path = folder / f"{name}-{factor}x" / "part-0.parquet"
    storage.write_table(replicate_rows(table, factor), str(path))
    return str(path.parent)


# -- sections --------------------------------------------------------------------------------------

def bench_ingest_section(cfg: GroundingConfig, opts: SuiteOptions, work: Path) -> list[Row]:
    from grounding.data.prepare import PrepareOptions
    from grounding.distributed.bench_ingest import bench_ingest

    manifest = storage.read_table(str(work / "attributes" / "manifest.parquet"))
    options = PrepareOptions(cfg.data.image_size, cfg.data.max_pixels, cfg.data.low_percentile,
                             cfg.data.high_percentile)
    res = bench_ingest(manifest, options, cfg.data.batch_size, cfg.data.rows_per_shard, opts.sizes)
    runs = {r["factor"]: r for r in res["runs"]}
    return [
        Row("ingest: plain loop, 1 process", "images/s", {k: r["plain"]["images_per_s"] for k, r in runs.items()},
            {k: r["plain"]["peak_rss_mib"] for k, r in runs.items()}, note=f"{manifest.num_rows} images at 1x"),
        Row(f"ingest: Ray Data prepare, {res['cpus']} CPUs", "images/s",
            {k: r["ray"]["images_per_s"] for k, r in runs.items()}, {k: r["ray"]["peak_rss_mib"] for k, r in runs.items()}),
        Row("ingest: Ray Data speed-up over the loop", "x", {k: r["speedup"] for k, r in runs.items()}, {},
            scales=False, note=f"goal >= {0.8 * res['cpus']:.1f}"),
        Row(f"ingest: Ray tasks engine (data.engine=ray_tasks), {res['cpus']} CPUs", "images/s",
            {k: r["ray_tasks"]["images_per_s"] for k, r in runs.items()},
            {k: r["ray_tasks"]["peak_rss_mib"] for k, r in runs.items()}),
        Row("ingest: Ray tasks speed-up over the loop", "x", {k: r["speedup_tasks"] for k, r in runs.items()}, {},
            scales=False, note=f"goal >= {0.8 * res['cpus']:.1f}"),
    ]


def bench_rois_section(cfg: GroundingConfig, opts: SuiteOptions, device: str) -> list[Row]:
    from grounding.bench.rois import bench_rois_for

    rows = []
    configs = [("default", cfg)]
    if device.startswith("cuda"):  # the paper's scale only where it runs in seconds
        configs.append(("paper", load_config("paper")))
    for label, c in configs:
        vals, peaks, extra = {}, {}, {}
        for k in opts.sizes:
            r, peak = _measure(lambda c=c, k=k: bench_rois_for(c, opts.rois_images * k, device), include_ray=False)
            vals[k], peaks[k], extra = round(r["images_per_second"], 1), peak, r
        rows.append(Row(f"ROI extraction ({label}: {extra['backbone']}, {extra['image_size']} px, "
                        f"N={extra['num_rois']}, {device})", "images/s", vals, peaks,
                        note=f"{extra['roi_parquet_bytes_per_image'] / 1024:.1f} KiB cache/image"))
    return rows


def bench_train_section(cfg: GroundingConfig, opts: SuiteOptions, work: Path, tmp: Path, device: str) -> list[Row]:
    from grounding.bench.train import plain_train
    from grounding.text.word_vectors import load_attribute_vectors

    vectors = load_attribute_vectors(str(work / "word_vectors"))
    table = storage.read_table(str(work / "rois"))
    plain, ray_sps, ratio, start, down, p_peak, r_peak = ({} for _ in range(7))
    for k in opts.sizes:
        rois = _replicated_file(table, k, tmp, "rois")
        if opts.ray:
            from grounding.distributed.bench_train import bench_train

            r, peak = _measure(lambda rois=rois: bench_train(cfg, rois=rois, vectors=vectors,
                                                             epochs=opts.train_epochs))
            plain[k], ray_sps[k] = round(r["plain"]["samples_per_s"]), round(r["ray"]["samples_per_s"])
            ratio[k] = round(r["ray_over_plain"], 3)
            start[k], down[k] = round(r["ray"]["startup_s"], 1), round(r["ray"]["teardown_s"], 1)
            r_peak[k] = peak
        else:
            r, p_peak[k] = _measure(lambda rois=rois: plain_train(
                cfg, storage.read_table(rois), vectors, opts.train_epochs, device=device), include_ray=False)
            plain[k] = round(r["samples_per_s"])
    note = f"{cfg.optim.batch_size} per batch, {device}" if not opts.ray else "1 worker vs 1 torch thread"
    rows = [Row("training: plain PyTorch loop", "samples/s", plain, p_peak, note=note)]
    if device.startswith("cuda"):
        rows.append(_paper_shaped_training(opts, tmp, device))
    if opts.ray:
        rows += [Row("training: Ray Train (cache mode)", "samples/s", ray_sps, r_peak,
                     note="peak: plain + Ray runs together"),
                 Row("training: Ray Train / plain", "x", ratio, {}, scales=False,
                     note="goal >= 0.85 (overhead < 15 %)"),
                 Row("training: Ray Train start-up", "s", start, {}, scales=False, note="fit() -> 1st step"),
                 Row("training: Ray Train teardown", "s", down, {}, scales=False,
                     note="last report -> fit() returns")]
    return rows


def _paper_shaped_training(opts: SuiteOptions, tmp: Path, device: str) -> Row:
    """The plain loop at the paper's shapes (300 ROIs x 256 features, paper model) on synthetic ROIs."""
    from grounding.model.batching import select_rows
    from grounding.bench.train import plain_train, synthetic_roi_table, synthetic_vectors
    from grounding.detection.rois import roi_feature_dim

    paper = load_config("paper")
    vectors = synthetic_vectors(paper.word_vectors.vector_size)
    width = roi_feature_dim(paper.detector.fpn_channels, paper.detector.roi_features)
    table = synthetic_roi_table(512, num_rois=paper.detector.num_rois, feature_dim=width, splits=(0.9, 0.1))
    vals, peaks = {}, {}
    for k in opts.sizes:
        r, peaks[k] = _measure(lambda k=k: plain_train(paper, replicate_rows(table, k), vectors, opts.train_epochs,
                                                        device=device), include_ray=False)
        vals[k] = round(r["samples_per_s"])
    return Row(f"training: plain loop, paper shapes (N={paper.detector.num_rois}, C={width})",
               "samples/s", vals, peaks,
               note=f"{paper.optim.batch_size} per batch, {device}, {select_rows(table, 'train').num_rows} train rows at 1x")


def bench_streaming_section(cfg: GroundingConfig, opts: SuiteOptions, work: Path, tmp: Path) -> list[Row]:
    from grounding.distributed.bench_train import cache_vs_streaming
    from grounding.data.prepared import read_prepared
    from grounding.text.word_vectors import load_attribute_vectors

    vectors = load_attribute_vectors(str(work / "word_vectors"))
    rois_table, prepared_table = storage.read_table(str(work / "rois")), read_prepared(str(work / "prepared"))
    detector = str(work / "detector" / "detector.pt")
    cfg = cfg.with_overrides({"run.work_dir": str(tmp / "streaming"), "run.storage_path": ""})
    cache, stream, ratio, peaks = {}, {}, {}, {}
    for k in opts.sizes:
        rois = _replicated_file(rois_table, k, tmp, "rois")
        prepared = _replicated_file(prepared_table, k, tmp, "prepared")
        r, peaks[k] = _measure(lambda rois=rois, prepared=prepared: cache_vs_streaming(
            cfg, rois, vectors, prepared, detector, opts.epochs))
        cache[k], stream[k], ratio[k] = r["cache"]["epoch_s"], r["streaming"]["epoch_s"], r["streaming_over_cache"]
    return [Row("epoch time: cache mode", "s", cache, peaks, higher_is_better=False),
            Row("epoch time: streaming mode (detector in the loop)", "s", stream, {}, higher_is_better=False),
            Row("epoch time: streaming / cache", "x", ratio, {}, scales=False, note="goal >= 20")]


def bench_tune_section(cfg: GroundingConfig, opts: SuiteOptions, work: Path, tmp: Path) -> list[Row]:
    from grounding.distributed.tune import run_search
    from grounding.config.search_space import load_space

    space = load_space(opts.tune_space)
    space = replace(space, num_samples=opts.tune_trials,
                    fixed={**space.fixed, "optim.max_epochs": opts.tune_epochs})
    base = cfg.with_overrides(dict(space.fixed))
    table = storage.read_table(str(work / "rois"))
    tph, peaks = {}, {}
    for k in opts.sizes:
        rois = _replicated_file(table, k, tmp, "rois")
        trial_cfg = base.with_overrides({"run.work_dir": str(tmp / f"tune-{k}x"), "run.storage_path": ""})
        name = f"bench-{k}x-{int(time.time())}"
        out, peaks[k] = _measure(lambda rois=rois, c=trial_cfg, name=name: run_search(
            space, c, rois, str(work / "word_vectors"), name).summary)
        tph[k] = out["trials_per_hour"]
    return [Row(f"Tune: trials/hour ({opts.tune_trials} trials x {opts.tune_epochs} epochs, "
                f"{Path(opts.tune_space).stem} space)", "trials/h", tph, peaks)]


TRAINING_STAGES = ("detector", "grounding", "grounding_no_cls")  # the pipeline's Ray Train stages
STAGE_GOAL = 1.25  # wall time <= 1.25 x (Ray Train start-up + compute)


def stage_rows(stages_by_size: dict[int, dict], label: str) -> list[Row]:
    """Per training stage: wall / (start-up + compute) at each size, from ``pipeline.json`` ``stages``."""
    rows = []
    for name in TRAINING_STAGES:
        got = {k: st[name] for k, st in stages_by_size.items()
               if st.get(name, {}).get("startup_s") is not None}
        if not got:
            continue
        ratio = {k: v["wall_over_startup_compute"] for k, v in got.items()}
        parts = "; ".join(f"{k}x: wall {v['wall_s']} s, start-up {v['startup_s']} s, "
                          f"compute {v['compute_s']} s" for k, v in got.items())
        rows.append(Row(f"{label}: {name} wall / (start-up + compute)", "x", ratio, {}, scales=False,
                        note=f"goal <= {STAGE_GOAL}; {parts}"))
    return rows


def bench_e2e_section(opts: SuiteOptions, work: Path, tmp: Path) -> list[Row]:
    from grounding.distributed.pipeline import run_pipeline

    base = load_config(None if opts.e2e_profile == "default" else opts.e2e_profile)
    minutes, peaks, stages = {}, {}, {}
    for k in opts.sizes:
        s = base.synth
        synth = replace(s, n_site_a=s.n_site_a * k, n_site_b=s.n_site_b * k, n_site_b_boxed=s.n_site_b_boxed * k,
                        n_site_c_patients=s.n_site_c_patients * k)
        c = replace(base, synth=synth).with_overrides({"run.work_dir": str(tmp / f"e2e-{k}x"), "run.storage_path": ""})
        start = time.perf_counter()
        _, peaks[k] = _measure(lambda c=c: {"state": run_pipeline(c, fresh=True)})
        minutes[k] = round((time.perf_counter() - start) / 60, 2)
        stages[k] = json.loads((tmp / f"e2e-{k}x" / "pipeline.json").read_text()).get("stages", {})
    rows = [Row(f"end to end: pipeline, {opts.e2e_profile} profile", "min", minutes, peaks, higher_is_better=False)]
    rows += stage_rows(stages, f"{opts.e2e_profile} pipeline")
    as_run = work / "pipeline.json"
    if as_run.exists():
        recorded = json.loads(as_run.read_text())
        total = recorded.get("wall_s") or recorded.get("stages_total_s")
        if total:
            rows.append(Row("end to end: pipeline, default profile (as last run)", "min",
                            {min(opts.sizes): round(total / 60, 2)}, {}, higher_is_better=False,
                            note=f"{work}/pipeline.json"))
        rows += stage_rows({min(opts.sizes): recorded.get("stages", {})}, "default pipeline (as last run)")
    return rows


# -- driver ----------------------------------------------------------------------------------------

def run_suite(cfg: GroundingConfig, opts: SuiteOptions, address: str | None = None) -> dict:
    """Run the chosen sections; write ``<out>/all.json`` and ``<out>/table.md``; return the results.

    A section that fails is recorded with its error and the others still run.
    """
    work = Path(opts.work_dir).absolute()
    sections = [s for s in opts.sections if opts.ray or s in RAY_FREE]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    missing = [p for p in sorted({p for s in sections for p in NEEDS[s]}) if not (work / p).exists()]
    if missing:
        raise FileNotFoundError(f"bench needs a finished pipeline in {work} (missing: {', '.join(missing)}); "
                                f"run 'grounding pipeline --work-dir {opts.work_dir}' first")
    device = str(resolve_device(opts.device))
    if opts.ray:
        from grounding.distributed.runtime import init_ray

        init_ray(address)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-all-", dir=str(out)))
    result: dict[str, Any] = {"machine": machine_info(device), "sizes": list(opts.sizes), "sections": {}}
    try:
        for name in sections:
            start = time.perf_counter()
            print(f"[bench] {name} ...", flush=True)
            try:
                rows = _section(name, cfg, opts, work, tmp, device)
            except Exception as err:
                log.exception("bench section %s failed", name)
                result["sections"][name] = {"rows": [], "error": f"{type(err).__name__}: {err}"}
                continue
            result["sections"][name] = {"rows": [_row_dict(r) for r in rows],
                                        "wall_s": round(time.perf_counter() - start, 1)}
            storage.atomic_write_text(str(out / "all.json"), json.dumps(result, indent=2))
            print(markdown_table({"sections": {name: result["sections"][name]}, "sizes": list(opts.sizes)},
                                 header=False), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    storage.atomic_write_text(str(out / "all.json"), json.dumps(result, indent=2))
    storage.atomic_write_text(str(out / "table.md"), markdown_table(result))
    return result


def _section(name: str, cfg: GroundingConfig, opts: SuiteOptions, work: Path, tmp: Path, device: str) -> list[Row]:
    if name == "ingest":
        return bench_ingest_section(cfg, opts, work)
    if name == "rois":
        return bench_rois_section(cfg, opts, device)
    if name == "train":
        return bench_train_section(cfg, opts, work, tmp, device)
    if name == "streaming":
        return bench_streaming_section(cfg, opts, work, tmp)
    if name == "tune":
        return bench_tune_section(cfg, opts, work, tmp)
    return bench_e2e_section(opts, work, tmp)


def _row_dict(r: Row) -> dict:
    return {"name": r.name, "unit": r.unit, "values": {str(k): v for k, v in r.values.items()},
            "peak_mib": {str(k): v for k, v in r.peak_mib.items()}, "higher_is_better": r.higher_is_better,
            "growth": None if r.growth() is None else round(r.growth(), 2), "note": r.note}


def markdown_table(result: dict, header: bool = True) -> str:
    """The README's benchmark table: one line per measured quantity, a column per size factor."""
    sizes = [str(s) for s in result["sizes"]]
    lines = []
    if header and "machine" in result:
        m = result["machine"]
        lines.append(f"Machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['gpu'] or 'no GPU'}; "
                     f"torch {m['torch']}, Ray {m['ray']}, device {m['device']}.\n")
    lines.append("| benchmark | unit | " + " | ".join(f"{s}x" for s in sizes) + " | scaling | peak MiB | note |")
    lines.append("|---|---|" + "---|" * len(sizes) + "---|---|---|")
    for name, section in result["sections"].items():
        if section.get("error"):
            lines.append(f"| {name}: FAILED | | " + " | ".join("-" for _ in sizes) + f" | | | {section['error'][:120]} |")
        for r in section["rows"]:
            vals = " | ".join(_fmt(r["values"].get(s)) for s in sizes)
            peaks = " / ".join(_fmt(r["peak_mib"][s]) for s in sizes if s in r["peak_mib"])
            g = r["growth"]
            scaling = "" if g is None else f"{g:.2f} ({_verdict(g)})"
            lines.append(f"| {r['name']} | {r['unit']} | {vals} | {scaling} | {peaks} | {r['note']} |")
    return "\n".join(lines) + "\n"


def _verdict(growth: float) -> str:
    """1.0 = linear; within 10 % of it is as close as these noisy 2-core runs can tell."""
    return "linear or better" if growth >= 1.0 else "about linear" if growth >= 0.9 else "sub-linear"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:g}"


__all__ = ["RAY_FREE", "SECTIONS", "Row", "SuiteOptions", "markdown_table", "replicate_rows", "run_suite"]
