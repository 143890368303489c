"""Streaming ingest: peak memory of `prepare` stays flat when the dataset grows 4x.

Each size runs in a fresh subprocess with its own Ray (``python tests/test_memory.py FACTOR OUT``):
Ray workers keep their memory after a run, so measuring two sizes in one Ray would only show the
first run's high-water mark. In the subprocess: ``ray.init(num_cpus=2)``, a warm-up prepare of a
few rows (starts the Ray Data workers and imports the decoders), then the measured prepare inside
``grounding.bench.memory.PeakMemory(include_ray=False)``: the subprocess plus its children, i.e. exactly
its own raylet/GCS and Ray workers, never another Ray on the machine. The figure compared is the
growth of that process tree over the baseline taken just before the measured run, at 1x (40 rows)
and 4x (160 rows) of 512 x 512 16-bit DICOMs resized to 256.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from badfiles import DX_SOP, _save, chest_like, radiograph_dataset  # noqa: E402

N_FILES = 10  # distinct files; replicate_manifest makes 1x = 40 rows, 4x = 160 rows


def _manifest(folder: Path, n_files: int):
    from grounding.data.schema import manifest_table, pseudonym

    rows = []
    for i in range(n_files):
        path = folder / f"img{i:03d}.dcm"
        if not path.exists():
            _save(radiograph_dataset(chest_like(512, 512, seed=i), sop=DX_SOP, modality="DX", bits_stored=12), path)
        rows.append({"image_id": pseudonym("image", str(path), "synthetic"), "patient_id": f"p{i}",
                     "study_id": f"s{i}", "dataset": "synthetic", "image_uri": str(path), "report_text": "x"})
    return manifest_table(rows)


def probe(factor: int, folder: Path) -> dict:
    """Run in a fresh process: growth of this process tree's RSS during one prepare of ``factor`` x 10 rows."""
    import ray

    from grounding.bench.memory import PeakMemory
    from grounding.data.prepare import PrepareOptions
    from grounding.distributed.bench_ingest import replicate_manifest
    from grounding.distributed.prepare import run_prepare

    options = PrepareOptions(image_size=256, max_pixels=4096 * 4096, low_percentile=0.5, high_percentile=99.5)
    base = _manifest(folder / "in", N_FILES)
    ctx = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.environ["MEM_RAY_TMP"], log_to_driver=False)
    os.environ["RAY_ADDRESS"] = ctx.address_info["address"]
    try:
        run_prepare(base.slice(0, 8), str(folder / "warm"), options, batch_size=8, rows_per_shard=32)
        with PeakMemory(interval_s=0.05, include_ray=False) as mem:
            summary = run_prepare(replicate_manifest(base, factor), str(folder / f"x{factor}"), options,
                                  batch_size=8, rows_per_shard=32)
    finally:
        ray.shutdown()
    return {"rows": N_FILES * factor, "written": summary["written"], "baseline_mib": round(mem.baseline_bytes / 2**20),
            "peak_mib": round(mem.peak_bytes / 2**20),
            "growth_mib": round((mem.peak_bytes - mem.baseline_bytes) / 2**20, 1)}


def _run_probe(factor: int, folder: Path) -> dict:
    from test_fault_tolerance import _end_leftovers

    ray_tmp = tempfile.mkdtemp(prefix="/tmp/rmm")
    env = {**os.environ, "MEM_RAY_TMP": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run([sys.executable, __file__, str(factor), str(folder)], env=env, capture_output=True,
                              text=True, timeout=300, start_new_session=True)
    finally:
        _end_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(lines[-1])


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(660)
def test_prepare_peak_memory_is_flat_at_4x_the_rows(tmp_path):
    one = _run_probe(4, tmp_path)
    four = _run_probe(16, tmp_path)
    print(json.dumps({"1x": one, "4x": four}))
    assert (one["written"], four["written"]) == (40, 160)
    # 160 decoded 512^2 float32 images are 160 MiB if held at once; streaming holds a few batches
    assert four["growth_mib"] < 1.5 * one["growth_mib"] + 32, (one, four)


if __name__ == "__main__":
    print(json.dumps(probe(int(sys.argv[1]), Path(sys.argv[2]))))
