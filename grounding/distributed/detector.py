"""(R) Ray glue for the detector: the train-detector TorchTrainer and the extract-rois Ray Data job.

train-detector: every worker reads the prepared Parquet itself (only the detector rows and the
columns it needs) and takes its share of a shared shuffled order (``detector_engine.rank_batches``,
equal steps per rank so DDP never hangs). Simpler than a Ray Data split and enough for box-labelled
sets (RSNA: ~27k images, 1.7 GiB of 256 px uint8 per worker). Rank 0 checkpoints every
``train.checkpoint_every`` epochs and after the last into a fresh temp dir (the other epochs only
report metrics); the run resumes by name (same ``run_id`` + storage path -> ``get_checkpoint()``) and
redoes at most that many epochs.

extract-rois: Ray Data streams the prepared shards through an actor pool of frozen detectors
(one per GPU, else one CPU actor), and the driver writes the ROI cache shards itself (atomic files,
one row per image_id: ids already written are skipped, so a rerun or a retried block never
duplicates a row and a crashed run continues where it stopped).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from grounding.detection import detector as det
from grounding.detection import engine as eng
from grounding.evaluation import metrics
from grounding.data import storage
from grounding.model.checkpoint import checkpoint_due
from grounding.config import GroundingConfig, RoiFeatures, RoiPool
from grounding.data.prepared import PREPARED_SCHEMA, read_prepared
from grounding.detection.rois import ROI_SCHEMA, read_roi_cache, rois_for_rows
from grounding.distributed.runtime import use_cpu_threads

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
HELDOUT_PREFIX = "heldout_"  # last epoch: every non-train detector-site row (val + test)


# -- train-detector ---------------------------------------------------------------------------
def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: supervised RetinaNet on the prepared detector rows, a checkpoint per epoch."""
    import ray.train
    import ray.train.torch

    cfg = GroundingConfig.from_dict(loop_config["config"])
    d = cfg.detector
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(d.seed)
    table = eng.detector_rows(read_prepared(loop_config["prepared"], columns=eng.TRAIN_COLUMNS))
    train = eng.samples_from_table(table.filter(pc.equal(table["split"], "train")))
    # every held-out row of the detector site (val + test: the val split alone is a handful of images);
    # reported, never used to pick a model (the last epoch is exported)
    held = eng.samples_from_table(table.filter(pc.not_equal(table["split"], "train"))) if rank == 0 else []
    val = [s for s, split in zip(held, table.filter(pc.not_equal(table["split"], "train"))["split"].to_pylist())
           if split == "val"]
    if not train:
        raise ValueError(f"{loop_config['prepared']}: no purpose=detector train rows with boxes")
    image_size = int(loop_config["image_size"])
    model = det.build_retinanet(d.backbone, d.fpn_channels, image_size, d.trainable_backbone_layers,
                                d.score_thresh, d.nms_thresh, d.detections_per_img,
                                anchor_base=d.anchor_fraction * image_size, aspect_ratios=d.aspect_ratios,
                                head_groupnorm=d.head_groupnorm, box_loss=d.box_loss)
    if d.weights_path:
        det.apply_weights(model, det.load_state_dict(d.weights_path, d.weights_sha256), strict=False)
    start = 0
    ckpt = ray.train.get_checkpoint()
    state = None
    if ckpt:
        with ckpt.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        start = int(state["epoch"]) + 1
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    optimizer = eng.make_optimizer(model.parameters(), d.optimizer, d.lr, d.weight_decay)
    steps = len(eng.rank_batches(train, rank, world, d.batch_size, d.seed, 0))  # the same every epoch
    scheduler = (eng.make_scheduler(optimizer, d.epochs * steps, round(d.warmup_epochs * steps))
                 if d.lr_schedule == "cosine" else None)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if rank == 0:
            print(f"[train-detector] resumed from epoch {start - 1}", flush=True)
    compute_s, first_start = 0.0, None  # this attempt's clock: fit() reports start-up and compute apart
    for epoch in range(start, d.epochs):
        epoch_start = time.time()
        first_start = first_start or epoch_start
        batches = eng.rank_batches(train, rank, world, d.batch_size, d.seed, epoch)
        # augmentation RNG per (seed, epoch, rank): a resumed epoch sees the same augmentation
        gen = torch.Generator().manual_seed(d.seed * 1_000_003 + epoch * 1009 + rank)
        stats = eng.train_one_epoch(model, optimizer, batches, device, d.grad_clip, scheduler, d.hflip,
                                    d.photometric, gen, d.scale_jitter)
        report = {"epoch": epoch, "train_loss": stats["loss"], "train_loss_classification":
                  stats["loss_classification"], "train_loss_box": stats["loss_box"]}
        if rank == 0:
            report.update(metrics.prefixed(eng.evaluate(core, val, (0.25, 0.5), d.batch_size, device)))
            if epoch == d.epochs - 1:
                report.update(metrics.prefixed(eng.evaluate(core, held, (0.25, 0.5), d.batch_size, device),
                                               HELDOUT_PREFIX))
        compute_s += time.time() - epoch_start
        report.update(compute_s=compute_s, first_epoch_start_time=first_start)
        save = checkpoint_due(epoch, cfg.train.checkpoint_every, epoch == d.epochs - 1)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0 and save:
                torch.save({"model": {k: v.cpu() for k, v in core.state_dict().items()},
                            "optimizer": optimizer.state_dict(), "epoch": epoch, "config": cfg.to_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else {},
                            "image_size": image_size}, os.path.join(folder, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            if rank == 0:
                print(_progress(epoch, d.epochs, stats, report), flush=True)
            ray.train.report(report, checkpoint=checkpoint)  # a barrier: every rank calls it
    if rank == 0:
        meta = det.detector_meta(d.backbone, d.fpn_channels, image_size, cfg.to_dict()["detector"])
        digest = det.export_detector(core.cpu(), loop_config["out"], meta)
        print(f"[train-detector] exported {storage.join(loop_config['out'], det.DETECTOR_FILE)} "
              f"sha256 {digest}", flush=True)


def _progress(epoch: int, epochs: int, stats: dict, report: dict) -> str:
    val = " ".join(f"{k} {report[k]:.3f}" for p in (metrics.VAL_PREFIX, HELDOUT_PREFIX) for k in (
        p + metrics.HIT_IOU25, p + metrics.HIT_IOU50, p + metrics.AP50, p + "num_images_with_boxes") if k in report)
    return (f"[train-detector] epoch {epoch + 1}/{epochs} loss {stats['loss']:.4f} "
            f"(cls {stats['loss_classification']:.4f} box {stats['loss_box']:.4f}) {val or 'no val rows'} "
            f"{stats['images'] / max(stats['seconds'], 1e-9):.1f} img/s")


def run_train_detector(cfg: GroundingConfig, prepared: str, out: str, run_id: str) -> dict[str, Any]:
    """Fit the detector with a TorchTrainer; returns the last reported metrics (+ ``detector``,
    ``fit_s``, ``startup_s``: fit() start -> first epoch, ``compute_s``: train + validation seconds)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from grounding.distributed.runtime import set_report_poll

    set_report_poll(cfg.train.report_poll_s)
    d = cfg.detector
    sizes = read_prepared(prepared, columns=["image_size"]).column("image_size").unique().to_pylist()
    if len(sizes) != 1:
        raise ValueError(f"{prepared}: expected one prepared image size, found {sizes}")
    storage_path = cfg.run.storage_path or storage.join(cfg.run.work_dir, "ray_storage")
    if not storage.is_uri(storage_path):
        storage_path = os.path.abspath(storage_path)
    storage.makedirs(out)
    cpus = d.cpus_per_worker
    if d.num_workers > 0 and not d.use_gpu:
        from grounding.distributed.runtime import cluster_cpus, largest_node_cpus

        # never ask for more CPUs than the cluster (or its biggest node) has: the run would wait forever.
        # Ray sets the worker's torch threads to this count, so 2 cores train ~2x faster with 2 than 1.
        cpus = max(min(cpus, cluster_cpus() / d.num_workers, largest_node_cpus()), 1.0)
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"config": cfg.to_dict(), "prepared": prepared, "out": out, "image_size": sizes[0]},
        scaling_config=ray.train.ScalingConfig(
            num_workers=d.num_workers, use_gpu=d.use_gpu,
            resources_per_worker=None if d.num_workers == 0 else {"CPU": cpus}),
        run_config=ray.train.RunConfig(
            name=run_id, storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=d.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=d.max_failures)),
    )
    t0, wall0 = time.perf_counter(), time.time()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    if result.error:
        raise result.error
    out_metrics = dict(result.metrics or {})
    out_metrics["detector"] = storage.join(out, det.DETECTOR_FILE)
    first = out_metrics.pop("first_epoch_start_time", None)
    ran = first is not None and first >= wall0  # no epoch ran in this fit: a resumed, finished run
    out_metrics.update(fit_s=fit_s, startup_s=first - wall0 if ran else fit_s,
                       compute_s=out_metrics.get("compute_s", 0.0) if ran else 0.0)
    return out_metrics


# -- extract-rois -----------------------------------------------------------------------------
class RoiExtractor:
    """Ray Data class UDF: prepared rows (pyarrow batch) -> ROI cache rows (``ROI_SCHEMA``).

    A row whose pixels cannot be read is dropped with an error naming its image_id; the batch goes on.
    """

    def __init__(self, weights_path: str, sha256: str, num_rois: int, use_gpu: bool = False,
                 pool: str = RoiPool.TOP_ANCHORS.value, features: str = RoiFeatures.TOWER.value,
                 threads: int = 1) -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            use_cpu_threads(threads)
        self.detector = det.load_frozen_detector(weights_path, sha256).to(self.device)
        self.num_rois = num_rois
        self.pool, self.features = RoiPool(pool), RoiFeatures(features)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return rois_for_rows(self.detector, batch.to_pylist(), self.num_rois, self.device,
                             pool=self.pool, features=self.features)


def run_extract_rois(
    cfg: GroundingConfig, prepared: str, weights_path: str, out: str, rows_per_shard: int | None = None
) -> dict[str, Any]:
    """Frozen detector once per prepared image -> ``out/*.parquet`` ROI cache; returns counts."""
    import ray
    import ray.data

    from grounding.distributed.runtime import cluster_gpus

    d = cfg.detector
    rows_per_shard = rows_per_shard or cfg.data.rows_per_shard
    sha = d.weights_sha256 if d.weights_path and d.weights_path == weights_path else ""
    det.load_frozen_detector(weights_path, sha)  # fail fast (checksum, architecture) before the cluster works
    storage.makedirs(out)
    done = _written_ids(out)
    all_ids = read_prepared(prepared, columns=["image_id"]).column("image_id").to_pylist()
    todo = len(set(all_ids) - done)
    log.info("extract-rois: %d images, %d already in %s, %d to do", len(set(all_ids)), len(done), out, todo)
    gpus = cluster_gpus() if d.use_gpu or d.extract_actors == 0 else 0
    use_gpu = gpus > 0
    actors = d.extract_actors or max(gpus, 1)
    t0 = time.perf_counter()
    written = 0
    if todo:
        ds = ray.data.read_parquet(prepared, columns=[c for c in PREPARED_SCHEMA.names if c != "boxes_prepared"])
        if done:
            done_ids = frozenset(done)
            ds = ds.filter(lambda row: row["image_id"] not in done_ids)
        ds = ds.map_batches(
            RoiExtractor, batch_size=d.extract_batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={"weights_path": weights_path, "sha256": sha, "num_rois": d.num_rois,
                                   "use_gpu": use_gpu, "pool": RoiPool(d.roi_pool).value,
                                   "features": RoiFeatures(d.roi_features).value,
                                   "threads": d.extract_threads},
            num_gpus=1 if use_gpu else 0, num_cpus=None if use_gpu else 1,
        )
        written = _write_shards(ds.iter_batches(batch_size=None, batch_format="pyarrow"), out, done,
                                rows_per_shard)
    seconds = time.perf_counter() - t0
    total = len(read_roi_cache(out, columns=["image_id"]))
    return {"images": len(set(all_ids)), "written": written, "already_done": len(done),
            "rows_in_cache": total, "missing": len(set(all_ids)) - total, "seconds": seconds,
            "actors": actors, "gpu": use_gpu}


def _written_ids(out: str) -> set[str]:
    fs, p = storage.resolve(out)
    from pyarrow import fs as pafs

    if not [f for f in fs.get_file_info(pafs.FileSelector(p, allow_not_found=True)) if f.path.endswith(".parquet")]:
        return set()
    return set(read_roi_cache(out, columns=["image_id"]).column("image_id").to_pylist())


def _write_shards(batches, out: str, done: set[str], rows_per_shard: int) -> int:
    """Write streamed ROI batches as atomic shards, skipping image ids already written."""
    seen = set(done)
    pending: list[pa.Table] = []
    n_pending = written = 0
    # unique per call: a rerun in the same second and process must not overwrite an earlier shard
    part = f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shard = 0

    def flush() -> None:
        nonlocal pending, n_pending, shard
        if n_pending:
            table = pa.concat_tables(pending).sort_by("image_id")
            storage.write_table(table, storage.join(out, f"rois-{part}-{shard:05d}.parquet"))
            shard += 1
        pending, n_pending = [], 0

    for batch in batches:
        ids = batch.column("image_id").to_pylist()
        keep = np.array([i not in seen for i in ids], dtype=bool)
        if not keep.any():
            continue
        batch = batch.filter(pa.array(keep))
        seen.update(batch.column("image_id").to_pylist())
        # the same id twice in one batch (duplicated input rows): keep the first
        ids = batch.column("image_id").to_pylist()
        first = np.array([ids.index(i) == k for k, i in enumerate(ids)], dtype=bool)
        batch = batch.filter(pa.array(first)).cast(ROI_SCHEMA)
        pending.append(batch)
        n_pending += len(batch)
        written += len(batch)
        if n_pending >= rows_per_shard:
            flush()
    flush()
    return written
