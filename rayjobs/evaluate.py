"""``grounding evaluate``: paper Table 1 (IoU >= 0.25/0.5/0.75 with bootstrap CIs), attribute metrics, report.

    grounding evaluate --rois runs/demo/rois --checkpoint runs/demo/train/run-1/model.pt \
        --checkpoint-no-cls runs/demo/train/run-nocls/model.pt --prepared runs/demo/prepared \
        --history runs/demo/train/run-1/metrics.jsonl --out runs/demo/eval

Rows: ROI-cache rows with expert boxes and purpose eval (``--subset test``: split test). Methods:
supervised RetinaNet (cached detections), proposed without classification, proposed, CAM and
Grad-CAM (need ``--prepared``). Writes metrics.json, report.md, predictions.parquet, figures/.
"""

from __future__ import annotations

import json
import sys

from grounding.data import input_checks as ic
from rayjobs._cli import build_config, check_inputs, clean_exit, common_parser, setup_logging

INPUTS = {"rois": ic.require_rois, "checkpoint": ic.require_checkpoint,
          "checkpoint_no_cls": ic.require_checkpoint,
          "prepared": ic.require_prepared, "history": ic.require_text, "manifest": ic.require_manifest_text,
          "out": ic.require_writable_folder}


def get_args_parser(add_help: bool = True):
    parser = common_parser(__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("--rois", required=True, help="ROI cache from extract-rois")
    parser.add_argument("--checkpoint", required=True, help="exported model.pt of the proposed model")
    parser.add_argument("--checkpoint-no-cls", default="", help="model.pt trained with loss.use_classification=false")
    parser.add_argument("--prepared", default="", help="prepared images (CAM/Grad-CAM baselines and figures)")
    parser.add_argument("--history", action="append", default=[], help="metrics.jsonl of a training run (repeatable)")
    parser.add_argument("--manifest", default="", help="manifest Parquet (report texts for the case study)")
    parser.add_argument("--subset", choices=["eval", "test"], default="eval",
                        help="held-out rows: purpose eval (default) or split test")
    parser.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU on alpha-ranked ROIs")
    parser.add_argument("--out", default=None, help="output folder (default: <work_dir>/eval)")
    parser.add_argument("--no-ray", action="store_true", help="run everything in this process (small runs)")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS, work_dir=cfg.run.work_dir)
    from grounding.data import storage
    from grounding.model.checkpoint import CheckpointError
    from grounding.evaluation.run import EvalSettings, run_evaluation
    from grounding.evaluation.localization import Subset

    settings = EvalSettings.from_config(cfg.eval, subset=Subset(args.subset), nms_iou=args.nms_iou)
    out = args.out or storage.join(cfg.run.work_dir, "eval")
    kw = dict(checkpoint_no_cls=args.checkpoint_no_cls, prepared=args.prepared, histories=args.history,
              manifest=args.manifest)
    try:
        if args.no_ray:
            metrics = run_evaluation(args.rois, args.checkpoint, out, settings, **kw)
        else:
            from grounding.distributed.evaluate import run_evaluation_ray
            from grounding.distributed.runtime import init_ray

            init_ray(args.address)
            metrics = run_evaluation_ray(args.rois, args.checkpoint, out, settings, **kw)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    for method, row in metrics["localization"].items():
        cells = "  ".join(f"{k} {v['estimate']:.3f}" for k, v in row.items() if isinstance(v, dict))
        print(f"{method:<16} {cells}")
    print(f"evaluate: {json.dumps({'out': out, 'counts': metrics['counts']}, default=str)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
