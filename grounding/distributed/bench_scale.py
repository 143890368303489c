"""(R) Scale benchmark: peak memory of ``prepare`` and ``extract-rois`` as the manifest grows 10x.

    grounding bench scale --rows 10000,100000 [--images 64] [--set data.image_size=64]

Each size runs in a fresh process with its own Ray (``python -m grounding.distributed.bench_scale``):
Ray workers keep their high-water mark after a run, so two sizes in one Ray would only show the first.
In that process: a small synthetic dataset (``--images`` distinct files), replicated with fresh image
ids to the row count (same files: scaling is isolated from I/O), a warm-up of both stages on a few
rows, then the measured ``prepare`` and ``extract-rois`` (a randomly initialised detector: memory does
not depend on what the weights learned), each inside ``PeakMemory(include_ray=False)``, i.e. that
process and its own Ray processes only. Streaming means the growth over the warm process stays flat;
what must grow is only the driver's set of image ids (about 100 bytes per row).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

WARM_ROWS = 64


def _manifest(folder: Path, images: int, seed: int, stored_size: int) -> pa.Table:
    from grounding.config import SynthConfig, replace
    from grounding.data.adapters.synthetic import synthetic_manifest
    from grounding.synth.generator import generate

    synth = replace(SynthConfig(), seed=seed, n_site_a=images // 2, n_site_b=images - images // 2, n_site_b_boxed=0,
                    n_site_c_patients=0, workers=1, site_a_size=stored_size, site_b_size=stored_size,
                    contact_per_site=0)
    generate(synth, str(folder))
    return synthetic_manifest(str(folder))


def _rows(manifest: pa.Table, rows: int) -> pa.Table:
    from grounding.distributed.bench_ingest import replicate_manifest

    return replicate_manifest(manifest, math.ceil(rows / manifest.num_rows)).slice(0, rows)


def probe(rows: int, folder: Path, images: int, image_size: int) -> dict:
    """In a fresh process: peak memory of prepare and extract-rois over ``rows`` manifest rows."""
    import ray
    import torch

    from grounding.bench.memory import PeakMemory
    from grounding.config import GroundingConfig
    from grounding.data.prepare import PrepareOptions
    from grounding.detection import detector as det
    from grounding.distributed.detector import run_extract_rois
    from grounding.distributed.prepare import run_prepare

    cfg = GroundingConfig().with_overrides({"detector.fpn_channels": 16, "detector.extract_batch_size": 32,
                                            "data.image_size": image_size})
    options = PrepareOptions(image_size=image_size, max_pixels=cfg.data.max_pixels,
                             low_percentile=cfg.data.low_percentile, high_percentile=cfg.data.high_percentile)
    manifest = _manifest(folder / "source", images, seed=0, stored_size=2 * image_size)
    torch.manual_seed(0)
    model = det.build_retinanet("resnet18", 16, image_size)
    det.export_detector(model, str(folder / "detector"), det.detector_meta("resnet18", 16, image_size,
                                                                        cfg.to_dict()["detector"]))
    weights = str(folder / "detector" / det.DETECTOR_FILE)
    ctx = ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _temp_dir=os.environ["SCALE_RAY_TMP"],
                   log_to_driver=False)
    os.environ["RAY_ADDRESS"] = ctx.address_info["address"]
    out: dict = {"rows": rows, "distinct_files": manifest.num_rows, "image_size": image_size}
    try:
        warm = _rows(manifest, WARM_ROWS)
        run_prepare(warm, str(folder / "warm"), options, cfg.data.batch_size, cfg.data.rows_per_shard)
        run_extract_rois(cfg, str(folder / "warm" / "images"), weights, str(folder / "warm-rois"))
        table = _rows(manifest, rows)
        for stage, run in (
            ("prepare", lambda: run_prepare(table, str(folder / "prepared"), options, cfg.data.batch_size,
                                            cfg.data.rows_per_shard)),
            ("extract_rois", lambda: run_extract_rois(cfg, str(folder / "prepared" / "images"), weights,
                                                      str(folder / "rois"))),
        ):
            start = time.perf_counter()
            with PeakMemory(interval_s=0.1, include_ray=False) as mem:
                summary = run()
            seconds = time.perf_counter() - start
            done = summary.get("written", 0) + summary.get("already_done", 0)
            out[stage] = {"rows_out": done, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds, 1),
                          "baseline_mib": round(mem.baseline_bytes / 2**20),
                          "peak_mib": round(mem.peak_bytes / 2**20),
                          "growth_mib": round((mem.peak_bytes - mem.baseline_bytes) / 2**20, 1)}
    finally:
        ray.shutdown()
    return out


def _end_processes_naming(marker: str) -> None:
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def run_probe(rows: int, folder: Path, images: int, image_size: int, timeout_s: float = 5400) -> dict:
    """``probe`` in a fresh Python process with its own Ray temp dir; ends whatever it leaves behind."""
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rsc")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "SCALE_RAY_TMP": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "grounding.distributed.bench_scale", str(rows), str(folder),
                               str(images), str(image_size)], env=env, capture_output=True, text=True,
                              timeout=timeout_s, start_new_session=True)
    finally:
        _end_processes_naming(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scale probe at {rows} rows failed: {(proc.stderr or proc.stdout)[-1500:]}")
    return json.loads(lines[-1])


def bench_scale(rows: tuple[int, ...], folder: Path, images: int = 64, image_size: int = 64) -> dict:
    """One probe per row count (smallest first); the peak of the largest against the smallest."""
    runs = []
    for n in sorted(rows):
        work = folder / f"rows-{n}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            runs.append(run_probe(n, work, images, image_size))
        finally:
            shutil.rmtree(work, ignore_errors=True)  # 100k prepared rows are ~0.5 GB
    result = {"runs": runs, "machine_cpus": os.cpu_count()}
    if len(runs) >= 2:
        lo, hi = runs[0], runs[-1]
        result["peak_ratio"] = {s: round(hi[s]["peak_mib"] / max(lo[s]["peak_mib"], 1), 3)
                                for s in ("prepare", "extract_rois")}
    return result


def markdown(result: dict) -> str:
    lines = ["| stage | rows | rows out | seconds | rows/s | baseline MiB | peak MiB | growth MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        for stage in ("prepare", "extract_rois"):
            s = r[stage]
            lines.append(f"| {stage} | {r['rows']:,} | {s['rows_out']:,} | {s['seconds']} | {s['rows_per_s']} | "
                         f"{s['baseline_mib']} | {s['peak_mib']} | {s['growth_mib']} |")
    if "peak_ratio" in result:
        lines.append("")
        lines.append("peak at the largest size / peak at the smallest: " + ", ".join(
            f"{k} {v}" for k, v in result["peak_ratio"].items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(probe(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
