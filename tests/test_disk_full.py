"""Disk full (issue 17 item 6) during a checkpoint, a ROI shard and a prepared shard.

Each case: the previous checkpoint or shard stays valid, nothing partial is left behind, the error is
recognisable as "disk full" (the jobs then print one line, see ``rayjobs._disk_full``), and a rerun
after space is freed completes without duplicates.

Two disks: ``injected`` (every platform) makes the write call itself write half its bytes and then
raise ENOSPC; ``tmpfs`` is a real 2 MiB tmpfs filled up to a margin (needs root: skipped with the
reason otherwise; CI's ``.ci/run`` runs as root on a machine like the development one).
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from grounding.model import checkpoint as ckpt
from grounding.data import storage

ROOT = Path(__file__).resolve().parents[1]


class Disk:
    """A folder whose disk can be filled (``fill``) and freed again (``free``)."""

    def __init__(self, root: Path, monkeypatch, real: bool):
        self.root, self.real, self._mp = root, real, monkeypatch
        self._filler = root / "filler.bin"

    def fill(self, leave: int = 8192) -> None:
        """Leave about ``leave`` bytes: smaller than any write the tests make afterwards."""
        if self.real:
            st = os.statvfs(self.root)
            free = st.f_bavail * st.f_frsize
            with open(self._filler, "ab") as f:
                f.write(b"\0" * max(0, free - leave))
            return
        # Injected: the write calls the code makes (Path.write_bytes for checkpoints, pq.write_table for
        # shards) write half of their bytes, then fail as a full disk does.
        real_write_bytes, real_write_table = Path.write_bytes, pq.write_table

        def write_bytes(path, data):
            if len(data) <= leave:  # small writes still fit, as on a real disk
                return real_write_bytes(path, data)
            real_write_bytes(path, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        def write_table(table, where, *args, **kwargs):
            buf = io.BytesIO()
            real_write_table(table, buf, *args, **kwargs)
            if len(buf.getvalue()) <= leave:
                return real_write_table(table, where, *args, **kwargs)
            write_bytes(Path(where), buf.getvalue())

        self._mp.setattr(Path, "write_bytes", write_bytes)
        self._mp.setattr(pq, "write_table", write_table)

    def free(self) -> None:
        if self.real:
            self._filler.unlink(missing_ok=True)
        else:
            self._mp.undo()


def _mount_tmpfs(path: Path, size: str = "2m") -> str | None:
    """Mount a tmpfs at ``path``; None on success, else why it cannot be done here."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else f"mount -t tmpfs not permitted here: {proc.stderr.strip()}"


@pytest.fixture(params=["injected", "tmpfs"])
def disk(request, tmp_path, monkeypatch):
    root = tmp_path / "disk"
    root.mkdir()
    if request.param == "tmpfs":
        why = _mount_tmpfs(root)
        if why:
            pytest.skip(why)
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(root)], check=False))
    return Disk(root, monkeypatch, real=request.param == "tmpfs")


def _leftovers(folder: Path) -> list[str]:
    """Temp files of an interrupted atomic write (``.<name>.*.tmp``) or partial staging folders."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("_images-")
                  or p.name.startswith("_quarantine_parts-"))


# -- checkpoint ------------------------------------------------------------------------------------
def _save(folder: Path, epoch: int, numel: int) -> Path:
    return ckpt.save_checkpoint(folder, model_state={"w": torch.full((numel,), float(epoch))}, config={"x": 1},
                                vocabulary=["a"], vocabulary_version="v", epoch=epoch)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(disk):
    folder = disk.root / "run" / "checkpoint"
    _save(folder, epoch=1, numel=16)
    disk.fill()
    with pytest.raises(OSError) as caught:
        _save(folder, epoch=2, numel=200_000)  # 800 kB: more than the space left
    assert storage.disk_full_error(caught.value) is not None
    state = ckpt.load_checkpoint(folder)  # sha256-verified: the previous checkpoint, whole
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.full((16,), 1.0))
    assert _leftovers(disk.root) == []
    disk.free()
    _save(folder, epoch=2, numel=200_000)  # the rerun after freeing space
    state = ckpt.load_checkpoint(folder)
    assert state["epoch"] == 2 and state["model"]["w"].numel() == 200_000
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256", "config.json",
                                                          "vocabulary.json"]


# -- ROI shard ---------------------------------------------------------------------------------------
def _roi_batches(n: int, start: int = 0) -> list[pa.Table]:
    from grounding.bench.train import synthetic_roi_table
    from grounding.detection.rois import ROI_SCHEMA

    table = synthetic_roi_table(n + start, num_rois=32, feature_dim=64)
    table = pa.table({f.name: table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
                      for f in ROI_SCHEMA}).cast(ROI_SCHEMA).slice(start, n)
    return [table.slice(i, 4) for i in range(0, n, 4)]


def _shard_ids(folder: Path) -> list[str]:
    """Every image id in every shard file (no de-duplication: a duplicate must show)."""
    return [i for f in sorted(folder.glob("*.parquet")) for i in pq.read_table(f).column("image_id").to_pylist()]


def test_disk_full_during_a_roi_shard_keeps_written_shards_and_the_rerun_adds_no_duplicates(disk):
    from grounding.distributed.detector import _write_shards, _written_ids

    out = disk.root / "rois"
    out.mkdir()
    first = _roi_batches(8)
    assert _write_shards(iter(first), str(out), set(), rows_per_shard=8) == 8
    before = _shard_ids(out)
    disk.fill()
    everything = _roi_batches(24)
    with pytest.raises(OSError) as caught:
        _write_shards(iter(everything), str(out), _written_ids(str(out)), rows_per_shard=16)
    assert storage.disk_full_error(caught.value) is not None
    assert _shard_ids(out) == before  # the earlier shard reads whole; the failed one left nothing
    assert _leftovers(disk.root) == []
    disk.free()
    _write_shards(iter(everything), str(out), _written_ids(str(out)), rows_per_shard=16)  # the rerun
    ids = _shard_ids(out)
    all_ids = [i for b in everything for i in b.column("image_id").to_pylist()]
    assert sorted(ids) == sorted(all_ids) and len(ids) == len(set(ids)) == 24


# -- prepared shard ----------------------------------------------------------------------------------
def _manifest(folder: Path, n: int) -> pa.Table:
    """n small PNG chest-like images and their manifest rows."""
    import numpy as np
    from PIL import Image

    from grounding.data.schema import manifest_table, pseudonym

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        path = folder / f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(path)
        rows.append({"image_id": pseudonym("image", f"i{k}", "t"), "study_id": pseudonym("study", f"s{k}", "t"),
                     "patient_id": pseudonym("patient", f"p{k}", "t"), "dataset": "test", "site": "T",
                     "image_uri": str(path), "split": "train", "purpose": "grounding", "report_text": ""})
    return manifest_table(rows)


def test_disk_full_during_a_prepared_shard_leaves_no_partial_shard_and_the_retry_writes_it_once(disk, tmp_path):
    from grounding.data.prepare import PrepareOptions
    from grounding.distributed.prepare import _prepare_shard

    rows = _manifest(tmp_path / "png", 6)
    options = PrepareOptions(image_size=128, max_pixels=10_000_000, low_percentile=0.5, high_percentile=99.5)
    staging, quarantine = disk.root / "staging", disk.root / "quarantine"
    staging.mkdir()
    quarantine.mkdir()
    assert _prepare_shard(rows.slice(0, 3), options, str(staging), str(quarantine)) == 3
    before = _shard_ids(staging)
    disk.fill()
    with pytest.raises(OSError) as caught:
        _prepare_shard(rows.slice(3, 3), options, str(staging), str(quarantine))
    assert storage.disk_full_error(caught.value) is not None
    assert _shard_ids(staging) == before and _leftovers(disk.root) == []
    disk.free()
    assert _prepare_shard(rows.slice(3, 3), options, str(staging), str(quarantine)) == 3  # Ray's task retry
    assert _prepare_shard(rows.slice(3, 3), options, str(staging), str(quarantine)) == 3  # ... even twice
    ids = _shard_ids(staging)
    assert sorted(ids) == sorted(rows.column("image_id").to_pylist()) and len(ids) == 6


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray_data", "ray_tasks"])
def test_disk_full_during_prepare_keeps_the_previous_output_and_leaves_no_staging(disk, tmp_path, ray_local,
                                                                                  engine):
    """The whole ``prepare`` on Ray: a failed run removes its staging folder; the rerun is complete."""
    from grounding.data.prepare import PrepareOptions
    from grounding.data.prepared import read_prepared
    from grounding.distributed.prepare import run_prepare

    if not disk.real:
        pytest.skip("Ray workers are other processes: only a real full disk reaches them")
    rows = _manifest(tmp_path / "png", 8)
    options = PrepareOptions(image_size=128, max_pixels=10_000_000, low_percentile=0.5, high_percentile=99.5)
    out = disk.root / "prepared"
    run_prepare(rows.slice(0, 4), str(out), options, batch_size=4, rows_per_shard=4, engine=engine)
    disk.fill(leave=4096)
    with pytest.raises(Exception) as caught:
        run_prepare(rows, str(out), options, batch_size=4, rows_per_shard=4, engine=engine)
    assert storage.disk_full_error(caught.value) is not None, repr(caught.value)[:2000]
    assert sorted(read_prepared(str(out / "images")).column("image_id").to_pylist()) == \
        sorted(rows.slice(0, 4).column("image_id").to_pylist())  # the previous output, whole
    assert _leftovers(out) == []
    disk.free()
    summary = run_prepare(rows, str(out), options, batch_size=4, rows_per_shard=4, engine=engine)
    ids = read_prepared(str(out / "images")).column("image_id").to_pylist()
    assert summary["written"] == 8 and sorted(ids) == sorted(rows.column("image_id").to_pylist())


# -- the message -------------------------------------------------------------------------------------
def test_a_full_disk_ends_a_job_with_one_line_and_no_traceback(disk):
    """``grounding prepare`` writing into a full disk: exit 1, one line saying what happened and what to do."""
    if not disk.real:
        pytest.skip("the job runs in its own process: the injected disk does not reach it")
    manifest = disk.root.parent / "manifest.parquet"
    storage.write_table(_manifest(disk.root.parent / "png", 200), str(manifest))
    disk.fill(leave=0)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "rayjobs.prepare", "--manifest", str(manifest), "--out",
                           str(disk.root / "prepared"), "--address", "local"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("prepare: disk full") and "rerun the same command" in lines[0]


@pytest.mark.parametrize("wrap", ["plain", "cause", "text"])
def test_disk_full_is_recognised_through_wrappers(wrap):
    from rayjobs._disk_full import message

    err = OSError(errno.ENOSPC, "No space left on device", "/runs/x/rois-1.parquet")
    if wrap == "cause":
        try:
            raise RuntimeError("UDF failed to process a data block.") from err
        except RuntimeError as outer:
            err = outer
    elif wrap == "text":  # Ray Train reports worker errors as text
        err = RuntimeError("Training failed: worker 0: OSError: [Errno 28] No space left on device")
    line = message(err, "prepare")
    assert line.startswith("prepare: disk full") and "rerun" in line
    assert message(ValueError("bad value"), "prepare") is None
    assert message(OSError(errno.EACCES, "Permission denied", "/x"), "prepare") is None
