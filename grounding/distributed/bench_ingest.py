"""(R) Benchmarks that need Ray: ingest (prepare) against a plain single-process loop.

Figures are measured side by side in one run on the same files (page cache warm for both), so
their ratio is meaningful even on a noisy machine. Ray start-up is reported separately.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pyarrow as pa

from grounding.config import PrepareEngine
from grounding.bench.memory import PeakMemory
from grounding.data.prepare import PrepareOptions, prepare_row
from grounding.data.schema import pseudonym


def replicate_manifest(manifest: pa.Table, factor: int) -> pa.Table:
    """``factor`` copies of every row with distinct image ids (same files: isolates scaling from I/O)."""
    copies = []
    for k in range(factor):
        ids = [pseudonym("image", f"{i}:{k}", "bench") for i in manifest.column("image_id").to_pylist()]
        copies.append(manifest.set_column(manifest.schema.get_field_index("image_id"), "image_id", pa.array(ids)))
    return pa.concat_tables(copies)


def plain_loop(manifest: pa.Table, options: PrepareOptions) -> dict:
    start = time.perf_counter()
    with PeakMemory(include_ray=False) as mem:
        written = sum(prepare_row(row, options)[0] is not None for row in manifest.to_pylist())
    seconds = time.perf_counter() - start
    return {"images": manifest.num_rows, "written": written, "seconds": round(seconds, 2),
            "images_per_s": round(manifest.num_rows / seconds, 1), "peak_rss_mib": round(mem.peak_mib)}


def ray_prepare(manifest: pa.Table, options: PrepareOptions, batch_size: int, rows_per_shard: int,
                engine: PrepareEngine = PrepareEngine.RAY_DATA) -> dict:
    from grounding.distributed.prepare import run_prepare

    out = tempfile.mkdtemp(prefix="bench-prepare-")
    try:
        start = time.perf_counter()
        with PeakMemory() as mem:
            summary = run_prepare(manifest, out, options, batch_size, rows_per_shard, engine=engine)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"images": manifest.num_rows, "written": summary["written"], "seconds": round(seconds, 2),
            "images_per_s": round(manifest.num_rows / seconds, 1), "peak_rss_mib": round(mem.peak_mib)}


def bench_ingest(manifest: pa.Table, options: PrepareOptions, batch_size: int, rows_per_shard: int,
                 sizes: tuple[int, ...] = (1, 4)) -> dict:
    """images/s of ``prepare`` on all cores vs a plain loop, and peak memory at each dataset size."""
    import ray

    from grounding.distributed.runtime import init_ray

    start = time.perf_counter()
    init_ray()
    ray_start_s = time.perf_counter() - start
    cpus = int(ray.cluster_resources().get("CPU", 1))
    # Rows spread over the manifest, so that every worker process (and the driver, for the plain loop)
    # has imported the decoder of each transfer syntax before the clock starts.
    step = max(1, manifest.num_rows // (16 * cpus))
    warm = manifest.take(list(range(0, manifest.num_rows, step)))
    for engine in PrepareEngine:
        ray_prepare(warm, options, batch_size, rows_per_shard, engine)
    plain_loop(warm, options)
    result = {"cpus": cpus, "ray_start_s": round(ray_start_s, 1), "machine_cpus": os.cpu_count(), "runs": []}
    for factor in sizes:
        rows = replicate_manifest(manifest, factor)
        plain = plain_loop(rows, options)
        distributed = ray_prepare(rows, options, batch_size, rows_per_shard)
        tasks = ray_prepare(rows, options, batch_size, rows_per_shard, PrepareEngine.RAY_TASKS)
        result["runs"].append({"factor": factor, "plain": plain, "ray": distributed, "ray_tasks": tasks,
                               "speedup": round(distributed["images_per_s"] / plain["images_per_s"], 2),
                               "speedup_tasks": round(tasks["images_per_s"] / plain["images_per_s"], 2)})
    result["speedup_per_core"] = round(result["runs"][-1]["speedup"] / cpus, 2)  # the largest size
    result["speedup_per_core_tasks"] = round(result["runs"][-1]["speedup_tasks"] / cpus, 2)
    return result
