"""(R) Ray Train V2 glue for the grounding model: the per-worker loop and the driver.

Data: the ROI cache is read by Ray Data; ``train`` (purpose grounding, split train) is split across
workers with ``streaming_split(equal=True)`` (``DataConfig(datasets_to_split=["train"])``) so every
rank takes the same number of steps; ``val`` (purpose grounding, split val) is read whole by every
rank, so the validation loss needs no collective.

Checkpoints: every ``train.checkpoint_every`` (k) epochs and after the last epoch (the end of
``optim.max_epochs`` or early stopping); every checkpoint carries the best-validation weights so far,
so the best is never lost. Epochs in between only report metrics (no checkpoint).

Resume: same ``storage_path`` + run id = same Ray run; the worker restores model, optimizer, RNG,
metric history and epoch from ``ray.train.get_checkpoint()``: a crash redoes at most k epochs.
Ray's local mode (``num_workers=0``)
keeps checkpoints in memory only, so there the worker keeps its own checkpoint folders under
``<storage>/<run_id>/local_checkpoints`` and resumes from the newest valid one.

Outputs under ``<work_dir>/train/<run_id>/``: ``metrics.jsonl`` (one line appended per epoch; a
resumed run first cuts it back to the checkpointed history, so it never duplicates an epoch),
``tensorboard/``,
``config.yaml``, and at the end ``model.pt`` (+ ``.sha256``) with the best-validation weights.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from grounding.model import engine
from grounding.model.batching import GROUNDING_PURPOSE, TRAIN_COLUMNS, InMemoryShard, collate_iter, select_rows
from grounding.model.checkpoint import (
    CheckpointError, checkpoint_due, export_model, load_checkpoint, save_checkpoint,
)
from grounding.config import GroundingConfig, RoiFeatures, RoiPool, TrainMode
from grounding.model.grounding_model import build_model
from grounding.data.storage import atomic_write_text, read_table
from grounding.text.vocabulary import ATTRIBUTES, NUM_ATTRIBUTES, VOCABULARY_VERSION

log = logging.getLogger(__name__)
LOCAL_CKPT_DIR = "local_checkpoints"


# -- worker ---------------------------------------------------------------------------------------
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _latest_local_checkpoint(root: Path) -> Optional[dict]:
    """Newest local-mode checkpoint that verifies; corrupt ones are skipped with a warning."""
    if not root.is_dir():
        return None
    for d in sorted(root.glob("epoch=*"), reverse=True):
        try:
            return load_checkpoint(d)
        except CheckpointError as err:
            log.warning("ignoring unusable checkpoint %s: %s", d.name, err)
    return None


def _load_resume_state(local_root: Optional[Path]) -> Optional[dict]:
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            return load_checkpoint(d)
    return _latest_local_checkpoint(local_root) if local_root is not None else None


class _Trackers:
    """Rank-0 TensorBoard and (when installed) MLflow; every failure here only warns."""

    def __init__(self, run_dir: Path, run_id: str, start_epoch: int, cfg: GroundingConfig) -> None:
        self.tb = None
        self.mlflow = None
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step drops events a crashed attempt wrote after the checkpoint we resume from
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch)
            except Exception as err:  # noqa: BLE001
                log.warning("TensorBoard disabled: %s", err)
        try:
            import mlflow  # optional

            mlflow.set_tracking_uri(cfg.train.mlflow_tracking_uri or (run_dir / "mlruns").absolute().as_uri())
            mlflow.set_experiment("grounding-train")
            self.mlflow = mlflow.start_run(run_name=run_id)
            mlflow.log_dict(cfg.to_dict(), "config.json")  # params are length-limited: config as artifact
        except ImportError:
            pass
        except Exception as err:  # noqa: BLE001
            log.warning("MLflow disabled: %s", err)

    def log(self, metrics: dict) -> None:
        step = int(metrics[engine.EPOCH])
        scalars = {k: float(v) for k, v in metrics.items() if k != engine.EPOCH and math.isfinite(float(v))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.mlflow is not None:
            import mlflow

            mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            import mlflow

            mlflow.end_run()


def train_fn_per_worker(config: dict) -> None:
    """Ray Train worker loop. ``config`` is plain data: see :func:`make_loop_config`."""
    import ray.train
    import ray.train.torch

    cfg = GroundingConfig.from_dict(config["grounding"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    run_dir = Path(config["run_dir"])
    local_root = Path(config["local_checkpoint_root"]) if config.get("local_mode") else None
    torch.manual_seed(cfg.optim.seed + rank)
    np.random.seed((cfg.optim.seed + rank) % 2**32)
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")

    vectors = np.asarray(config["word_vectors"], dtype=np.float32)
    negatives = np.asarray(config["negative_vectors"], dtype=np.float32)
    model = build_model(int(config["feature_dim"]), vectors, negatives, cfg.model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    history: list[dict] = []
    best_state, best_loss = None, math.inf
    state = _load_resume_state(local_root)
    if state is not None:
        saved_model_cfg = json.loads(state["config_json"]).get("model")
        if saved_model_cfg != cfg.to_dict()["model"]:
            raise ValueError(
                f"run {config['run_id']}: its checkpoint was trained with a different model section "
                f"({saved_model_cfg}); use a new --run-id to train a different architecture"
            )
        model.load_state_dict(state["model"])
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        best_state = state.get("best_model")
        finite = [h[engine.VAL_LOSS] for h in history if math.isfinite(h[engine.VAL_LOSS])]
        best_loss = min(finite) if finite else math.inf
        # no RNG state to restore: every epoch reseeds from (seed, epoch, rank) (engine.seed_epoch)
    start_epoch = len(history)
    if rank == 0 and state is not None:
        print(f"[grounding.train] resuming run {config['run_id']} at epoch {start_epoch}", flush=True)
    model = ray.train.torch.prepare_model(model) if world > 1 else model.to(device)

    trackers = _Trackers(run_dir, config["run_id"], start_epoch, cfg) if rank == 0 else None
    if rank == 0:  # the checkpointed history; epochs a crashed attempt logged after it are redone
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    to_columns = _streaming_rois(config, device) if config.get("mode") == TrainMode.STREAMING.value else None
    fmt = "pyarrow" if to_columns else "numpy"
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    bs = cfg.optim.batch_size
    shuffle = cfg.train.shuffle_buffer_batches * bs or None
    in_memory = to_columns is None and cfg.train.shard_in_memory
    if in_memory:  # one pass through Ray Data; later epochs shuffle row indices in memory
        train_rows = InMemoryShard(train_shard.iter_batches(batch_size=None, batch_format="pyarrow"), device)
        val_rows = InMemoryShard(val_shard.iter_batches(batch_size=None, batch_format="pyarrow"), device)
    stop = _early_stop(cfg, history, device)  # a resumed run may have stopped already
    compute_s = 0.0  # this attempt's train + validation seconds (fit() reports start-up and compute apart)
    for epoch in range(start_epoch, cfg.optim.max_epochs):
        if stop:
            if rank == 0:
                print(f"[grounding.train] early stopping after epoch {epoch - 1}", flush=True)
            break
        epoch_start = time.time()
        engine.seed_epoch(cfg.optim.seed, epoch, rank)  # dropout: the same masks after a resume
        epoch_seed = cfg.optim.seed + 1000 * epoch + rank if shuffle else None
        if in_memory:
            train_batches = train_rows.batches(bs, epoch_seed)
            val_batches = (b for b in val_rows.batches(bs) if b is not None)
        else:
            raw = train_shard.iter_batches(batch_size=bs, batch_format=fmt, local_shuffle_buffer_size=shuffle,
                                           local_shuffle_seed=epoch_seed)
            val_raw = val_shard.iter_batches(batch_size=bs, batch_format=fmt)
            if to_columns is not None:
                raw, val_raw = map(to_columns, raw), map(to_columns, val_raw)
            train_batches, val_batches = collate_iter(raw, keep_empty=True), collate_iter(val_raw)
        tr = engine.train_one_epoch(
            model, optimizer, train_batches, beta=cfg.loss.beta,
            use_classification=cfg.loss.use_classification, bce_weight=cfg.loss.bce_weight,
            negative_rois=cfg.loss.negative_rois, alpha_distill=cfg.loss.alpha_distill,
            alpha_distill_temperature=cfg.loss.alpha_distill_temperature, grad_clip=cfg.optim.grad_clip,
            max_consecutive_nonfinite=cfg.train.max_consecutive_nonfinite, device=device,
        )
        va = engine.evaluate_epoch(
            _unwrap(model), val_batches,
            beta=cfg.loss.beta, use_classification=cfg.loss.use_classification,
            bce_weight=cfg.loss.bce_weight, device=device, negative_rois=cfg.loss.negative_rois,
            alpha_distill=cfg.loss.alpha_distill, alpha_distill_temperature=cfg.loss.alpha_distill_temperature,
        )
        metrics = engine.epoch_metrics(epoch, tr, va)
        metrics["train_samples"] = tr.samples
        metrics["first_step_time"] = tr.first_step_time
        metrics["epoch_start_time"] = epoch_start
        metrics["report_time"] = time.time()
        compute_s += metrics["report_time"] - epoch_start
        metrics["compute_s"] = compute_s
        history.append({k: metrics[k] for k in metrics})
        if math.isfinite(va.loss) and va.loss < best_loss:
            best_loss = va.loss
            best_state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
        stop = _early_stop(cfg, history, device)
        final = stop or epoch == cfg.optim.max_epochs - 1
        save = checkpoint_due(epoch, cfg.train.checkpoint_every, final)
        _report(cfg, config, rank, epoch, model, optimizer, history, best_state, metrics, local_root, save)
        if rank == 0:
            print(f"[grounding.train] {engine.progress_line(metrics)}", flush=True)  # worker stdout reaches the driver
            with open(run_dir / "metrics.jsonl", "a") as f:  # append: rewriting grows with the epoch count
                f.write(json.dumps(metrics) + "\n")
            trackers.log(metrics)
    if rank == 0:
        trackers.close()
        final = best_state or _unwrap(model).state_dict()
        final = {k: v.detach().cpu() for k, v in final.items()}
        export_model(
            run_dir, model_state=final, config=cfg.to_dict(), config_yaml=cfg.to_yaml(), vocabulary=ATTRIBUTES,
            vocabulary_version=config["vocabulary_version"], epoch=len(history) - 1,
            word_vectors_version=config.get("word_vectors_version", ""),
            extra={"run_id": config["run_id"], "best_val_loss": best_loss},
        )
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def _early_stop(cfg: GroundingConfig, history: list[dict], device: torch.device) -> bool:
    stop = engine.should_stop([h[engine.VAL_LOSS] for h in history], cfg.optim.early_stop_patience,
                              cfg.optim.early_stop_min_rel_change)
    return _broadcast_flag(stop, device)


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision for everyone: ranks evaluating in another order could differ in the last
    float bit, and one rank stopping alone would leave the others hanging in a collective."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item() > 0.5)
    return flag


def _streaming_rois(config: dict, device: torch.device):
    """STREAMING mode: the frozen detector runs inside this worker on prepared-image batches.

    Returns a function mapping a pyarrow batch of prepared rows to ROI-cache columns (the same
    columns the cache mode reads), via the detector engineer's ``rois_for_rows``.
    """
    from grounding.detection.detector import load_frozen_detector
    from grounding.detection.rois import rois_for_rows

    detector = load_frozen_detector(config["detector_weights"], config.get("detector_sha256", "")).to(device)
    num_rois = int(config["num_rois"])
    pool, features = config["roi_pool"], config["roi_features"]  # detector.roi_pool / roi_features

    def to_columns(table) -> dict:
        rois = rois_for_rows(detector, table.to_pylist(), num_rois, device, pool=pool, features=features)
        return rois.to_pydict()

    return to_columns


def _report(cfg, config, rank, epoch, model, optimizer, history, best_state, metrics, local_root,
            save: bool) -> None:
    """Checkpoint from rank 0 when ``save`` (fresh folder per report), then the report barrier on
    every rank."""
    import ray.train

    ckpt_dir = None
    checkpoint = None
    if rank == 0 and save:
        if local_root is not None:
            ckpt_dir = local_root / f"epoch={epoch:05d}"
        else:
            ckpt_dir = Path(tempfile.mkdtemp(prefix="grounding-ckpt-"))
        save_checkpoint(
            ckpt_dir, model_state=_unwrap(model).state_dict(), config=cfg.to_dict(), vocabulary=ATTRIBUTES,
            vocabulary_version=config["vocabulary_version"], epoch=epoch, optimizer_state=optimizer.state_dict(),
            history=history, best_model_state=best_state,  # rng: captured by default, unused on resume
            word_vectors_version=config.get("word_vectors_version", ""),
        )
        checkpoint = ray.train.Checkpoint.from_directory(str(ckpt_dir))
    ray.train.report({k: v for k, v in metrics.items()}, checkpoint=checkpoint)
    if rank == 0 and local_root is None and ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # SYNC upload has finished: storage holds the copy
    if rank == 0 and local_root is not None:
        for old in sorted(local_root.glob("epoch=*"))[: -cfg.train.checkpoints_to_keep]:
            shutil.rmtree(old, ignore_errors=True)


# -- driver ---------------------------------------------------------------------------------------
@dataclass
class TrainRunResult:
    run_id: str
    run_dir: str
    storage_path: str
    model_path: str
    history: list[dict] = field(default_factory=list)
    fit_seconds: float = 0.0  # wall time of fit()
    startup_s: float = 0.0  # fit() start -> the first epoch of this fit starts (Ray start-up)
    compute_s: float = 0.0  # this fit's train + validation seconds (the worker's own clock)
    error: Optional[str] = None


def fit_clock(history: list[dict], fit_start: float, fit_seconds: float) -> tuple[float, float]:
    """(start-up, compute) seconds of one fit from its epochs' ``epoch_start_time``/``compute_s``.

    Only epochs started after ``fit_start`` (wall clock) count; none (a resumed run that was already
    done) means start-up is the whole fit and compute 0.
    """
    mine = [h for h in history if h.get("epoch_start_time", 0.0) >= fit_start]
    if not mine:
        return fit_seconds, 0.0
    return mine[0]["epoch_start_time"] - fit_start, float(mine[-1].get("compute_s", 0.0))


def new_run_id() -> str:
    return "train-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


def _vectors_arrays(vectors: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """Accept the NLP engineer's AttributeVectors (duck-typed); check shapes and attribute order."""
    vec = np.asarray(vectors.vectors, dtype=np.float32)
    neg = np.asarray(vectors.negative_vectors, dtype=np.float32)
    if vec.ndim != 2 or vec.shape[0] != NUM_ATTRIBUTES or neg.shape != vec.shape:
        raise ValueError(f"word vectors must be ({NUM_ATTRIBUTES}, d) with matching negatives, got {vec.shape}/{neg.shape}")
    names = getattr(vectors, "attributes", None)
    if names is not None and tuple(names) != ATTRIBUTES:
        raise ValueError("word vectors were built for a different attribute vocabulary/order")
    return vec, neg, str(getattr(vectors, "vocabulary_version", ""))


def make_loop_config(cfg: GroundingConfig, vectors: Any, feature_dim: int, run_id: str, run_dir: str,
                     storage_path: str) -> dict:
    """The plain-dict ``train_loop_config`` (small lists only; data goes through ``datasets=``)."""
    vec, neg, wv_version = _vectors_arrays(vectors)
    return {
        "grounding": cfg.to_dict(), "word_vectors": vec.tolist(), "negative_vectors": neg.tolist(),
        "word_vectors_version": wv_version, "vocabulary_version": VOCABULARY_VERSION,
        "feature_dim": int(feature_dim), "run_id": run_id, "run_dir": run_dir,
        "local_mode": cfg.train.num_workers == 0,
        "local_checkpoint_root": str(Path(storage_path, run_id, LOCAL_CKPT_DIR)),
    }


def roi_datasets(rois: str, materialize: bool = True) -> tuple[dict, int, dict[str, int]]:
    """Ray datasets ``train``/``val`` from the ROI cache, the feature width and the row counts.

    ``materialize`` reads the Parquet once (driver, pyarrow) into the object store: on small caches
    re-reading it every epoch costs more than the training itself. ``False`` streams it with
    ``ray.data.read_parquet`` every epoch (caches larger than the driver's memory).
    """
    import ray.data
    import pyarrow.compute as pc

    meta = read_table(rois, columns=["purpose", "split", "feature_dim"])
    counts = {}
    for split in ("train", "val"):
        keep = pc.and_(pc.equal(meta["purpose"], GROUNDING_PURPOSE), pc.equal(meta["split"], split))
        counts[split] = int(pc.sum(keep.cast("int64")).as_py() or 0)
    if counts["train"] == 0:
        raise ValueError(f"{rois}: no ROI rows with purpose={GROUNDING_PURPOSE} and split=train")
    dims = set(pc.unique(meta["feature_dim"]).to_pylist())
    if len(dims) != 1:
        raise ValueError(f"{rois}: ROI rows disagree on feature_dim: {sorted(dims)}")
    if materialize:
        # Small/medium caches: one pyarrow read in the driver, handed to Ray as in-memory blocks.
        # (Ray Data's read tasks cost seconds each on a busy machine and would run every epoch.)
        table = read_table(rois, columns=TRAIN_COLUMNS + ["purpose", "split"])
        out = {
            split: ray.data.from_arrow(select_rows(table, split).select(TRAIN_COLUMNS))
            for split in ("train", "val")
        }
    else:
        ds = ray.data.read_parquet(rois, columns=TRAIN_COLUMNS + ["purpose", "split"])
        out = {
            split: ds.filter(expr=f"purpose == '{GROUNDING_PURPOSE}' and split == '{split}'")
            .select_columns(TRAIN_COLUMNS)
            for split in ("train", "val")
        }
    return out, int(dims.pop()), counts


def prepared_datasets(prepared: str) -> tuple[dict, dict[str, int]]:
    """STREAMING mode: Ray datasets of prepared images (purpose grounding) for ``train``/``val``."""
    import ray.data

    from grounding.data.prepared import read_prepared

    table = read_prepared(prepared)
    out = {split: ray.data.from_arrow(select_rows(table, split)) for split in ("train", "val")}
    counts = {split: int(select_rows(table, split).num_rows) for split in ("train", "val")}
    if counts["train"] == 0:
        raise ValueError(f"{prepared}: no prepared rows with purpose={GROUNDING_PURPOSE} and split=train")
    return out, counts


def run_training(cfg: GroundingConfig, rois: str, vectors: Any, run_id: str = "",
                 prepared: str = "", detector_weights: str = "", *, callbacks: Optional[list] = None,
                 gpus_per_worker: float = 1.0) -> TrainRunResult:
    """Build and fit the TorchTrainer (same run id + storage = resume). Ray must be initialised.

    Args:
        cfg: the resolved config (``train.mode`` picks the data path).
        rois: ROI cache (CACHE mode).
        vectors: AttributeVectors-like (``.vectors``, ``.negative_vectors``, ``.vocabulary_version``).
        run_id: fixed id (resumable); default ``run.run_id`` or a fresh timestamped one.
        prepared: prepared-image cache (STREAMING mode).
        detector_weights: exported ``detector.pt`` (STREAMING mode; default ``detector.weights_path``).
        callbacks: ``ray.train.UserCallback``s for the run (Tune passes its ``TuneReportCallback``).
        gpus_per_worker: GPU share of each worker when ``train.use_gpu`` (fractional for Tune trials).
    """
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from grounding.distributed.runtime import set_report_poll

    set_report_poll(cfg.train.report_poll_s)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the per-epoch line is the progress
    run_id = run_id or cfg.run.run_id or new_run_id()
    work_dir = Path(cfg.run.work_dir).absolute()
    from grounding.distributed.runtime import storage_path

    storage = storage_path(str(work_dir), cfg.run.storage_path)  # absolute; refuses head-only paths multi-node
    from grounding.model.run_checks import check_resume_state

    # Before any worker starts: a truncated Ray snapshot or a deleted/corrupt checkpoint fails here with
    # advice, instead of late in fit() or as a silent fresh start (reliability.md A6/A7).
    resume = check_resume_state(storage, run_id)
    if not resume.fresh:
        log.info("run %s: resuming from %s", run_id, resume.latest)
    run_dir = work_dir / "train" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    def _abs(p: str) -> str:
        return p if "://" in p else str(Path(p).absolute())

    streaming = {}
    if cfg.train.mode is TrainMode.STREAMING:
        weights = detector_weights or cfg.detector.weights_path
        if not prepared or not weights:
            raise ValueError("train.mode=streaming needs the prepared images and the detector weights")
        from grounding.detection.detector import load_frozen_detector
        from grounding.detection.rois import roi_feature_dim

        # Load once here: a wrong path or checksum fails before any worker starts.
        channels = load_frozen_detector(_abs(weights), cfg.detector.weights_sha256).feature_dim
        feature_dim = roi_feature_dim(channels, cfg.detector.roi_features)
        datasets, counts = prepared_datasets(_abs(prepared))
        streaming = {"mode": TrainMode.STREAMING.value, "detector_weights": _abs(weights),
                     "detector_sha256": cfg.detector.weights_sha256, "num_rois": cfg.detector.num_rois,
                     "roi_pool": RoiPool(cfg.detector.roi_pool).value,
                     "roi_features": RoiFeatures(cfg.detector.roi_features).value}
    else:
        datasets, feature_dim, counts = roi_datasets(_abs(rois), cfg.train.materialize)
    log.info("run %s (%s): %d train / %d val rows, feature_dim %d, storage %s", run_id, cfg.train.mode.value,
             counts["train"], counts["val"], feature_dim, storage)
    loop_config = {**make_loop_config(cfg, vectors, feature_dim, run_id, str(run_dir), storage), **streaming}
    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_id, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
            callbacks=list(callbacks or []),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    t0, wall0 = time.perf_counter(), time.time()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    metrics_file = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    err = str(result.error) if getattr(result, "error", None) else None
    startup_s, compute_s = fit_clock(history, wall0, fit_s)
    return TrainRunResult(run_id=run_id, run_dir=str(run_dir), storage_path=storage,
                          model_path=str(run_dir / "model.pt"), history=history, fit_seconds=fit_s,
                          startup_s=startup_s, compute_s=compute_s, error=err)


__all__ = [
    "TrainRunResult", "fit_clock", "make_loop_config", "new_run_id", "prepared_datasets", "roi_datasets",
    "run_training",
    "train_fn_per_worker",
]
