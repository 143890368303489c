"""(R) Ray adapter for ``grounding evaluate``: model scoring as Ray Data ``map_batches`` and the
per-method bootstraps as Ray tasks. The work is ``grounding.evaluation.localization`` / ``grounding.evaluation.bootstrap``;
results equal the in-process run (tested).
"""

from __future__ import annotations

import pyarrow as pa

from grounding.evaluation.localization import SCORE_COLUMNS
from grounding.evaluation.run import EvalSettings, run_evaluation

_SCORE_SCHEMA = pa.schema([("image_id", pa.string()), ("pred_boxes", pa.list_(pa.float64())),
                           ("pred_scores", pa.list_(pa.float64())),
                           ("probabilities", pa.list_(pa.float64()))])


class RoiScorer:
    """Ray Data class UDF: ROI-cache rows (pyarrow batch) -> ``evaluation.score_table`` rows.

    The model is loaded once per actor (sha256-verified, weights-only), on the GPU when given one.
    """

    def __init__(self, model_path: str, nms_iou: float, batch_size: int, use_gpu: bool = False) -> None:
        import torch

        from grounding.model.checkpoint import load_model

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model, _, _ = load_model(model_path)
        self.model.to(self.device)
        self.nms_iou, self.batch_size = nms_iou, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from grounding.evaluation.localization import score_table

        out = score_table(self.model, batch, top_k=1, nms_iou=self.nms_iou, batch_size=self.batch_size,
                          device=self.device)
        return out.cast(_SCORE_SCHEMA) if out.num_rows else _SCORE_SCHEMA.empty_table()


def score_checkpoint_ray(model_path: str, table: pa.Table, nms_iou: float = 0.5,
                         batch_size: int = 64) -> pa.Table:
    """``evaluate_run.score_checkpoint`` through an actor pool (one per GPU, else one CPU actor)."""
    import ray.data

    from grounding.distributed.runtime import cluster_gpus

    if table.num_rows == 0:
        return _SCORE_SCHEMA.empty_table()
    gpus = cluster_gpus()
    ds = ray.data.from_arrow(table).map_batches(
        RoiScorer, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(gpus, 1)),
        fn_constructor_kwargs={"model_path": model_path, "nms_iou": nms_iou, "batch_size": batch_size,
                               "use_gpu": gpus > 0},
        num_gpus=1 if gpus else 0, num_cpus=None if gpus else 1,
    )
    parts = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    out = pa.concat_tables([p.cast(_SCORE_SCHEMA) for p in parts]) if parts else _SCORE_SCHEMA.empty_table()
    return out.select(list(SCORE_COLUMNS)).sort_by("image_id")


def run_evaluation_ray(rois: str, checkpoint: str, out: str, settings: EvalSettings, **kw) -> dict:
    """``run_evaluation`` with Ray Data scoring and Ray-task bootstraps (Ray must be initialised)."""
    from grounding.distributed.tasks import localization_cis_ray

    return run_evaluation(rois, checkpoint, out, settings, score_fn=score_checkpoint_ray,
                          cis_fn=localization_cis_ray, **kw)


__all__ = ["RoiScorer", "run_evaluation_ray", "score_checkpoint_ray"]
