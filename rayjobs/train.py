"""``grounding train``: Ray Train (V2) fit of the cross-attention grounding model on the ROI cache.

Example::

    grounding train --rois runs/demo/rois --word-vectors runs/demo/word_vectors --run-id demo-1 \
        --set train.num_workers=2 --set optim.max_epochs=40

Re-running with the same ``--run-id`` (and storage) resumes from the last checkpoint.
Streaming mode (frozen detector inside the workers)::

    grounding train --set train.mode=streaming --prepared runs/demo/prepared \
        --detector runs/demo/detector/detector.pt --word-vectors runs/demo/word_vectors
"""

from __future__ import annotations

import json
import logging
import sys

from rayjobs import _disk_full
from grounding.data import input_checks as ic
from rayjobs._cli import (build_config, check_inputs, clean_exit, exclusive_run,
                          get_args_parser as common_parser, setup_logging)

log = logging.getLogger("grounding.train")
INPUTS = {"rois": ic.require_rois, "prepared": ic.require_prepared, "detector": ic.require_checkpoint,
          "word_vectors": ic.require_word_vectors}


def get_args_parser(add_help: bool = True):
    parser = common_parser("Train the cross-attention grounding model (Ray Train V2).", add_help=add_help)
    parser.add_argument("--rois", default="", help="ROI cache (Parquet file or folder) from extract-rois")
    parser.add_argument("--prepared", default="", help="prepared images (train.mode=streaming only)")
    parser.add_argument("--detector", default="", help="detector.pt (streaming; default detector.weights_path)")
    parser.add_argument("--word-vectors", required=True, help="folder written by `grounding word-vectors`")
    parser.add_argument("--run-id", default="", help="fixed id = resumable run (default: run.run_id or a fresh one)")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS, work_dir=cfg.run.work_dir)
    if cfg.train.mode.value == "cache" and not args.rois:
        print("train: --rois is required (or --set train.mode=streaming with --prepared)", file=sys.stderr)
        return 2
    try:
        from grounding.text.word_vectors import load_attribute_vectors  # NLP engineer's API, imported lazily

        vectors = load_attribute_vectors(args.word_vectors)
    except (ImportError, OSError, ValueError) as err:
        print(f"train: cannot load word vectors from {args.word_vectors}: {err}", file=sys.stderr)
        return 2
    from grounding.model.run_checks import RunStateError, require_run_id

    try:
        require_run_id("train", args.run_id or cfg.run.run_id, args.address)  # before init_ray sets RAY_ADDRESS
    except RunStateError as err:
        print(str(err), file=sys.stderr)
        return 2
    run_id = args.run_id or cfg.run.run_id
    if run_id:  # a fixed id = a resumable Ray run: one driver at a time (a fresh id cannot collide)
        with exclusive_run(cfg, run_id, "train"):
            return _train(args, cfg, vectors)
    return _train(args, cfg, vectors)


def _train(args, cfg, vectors) -> int:
    from grounding.distributed.runtime import init_ray
    from grounding.distributed.train import run_training
    from grounding.model.run_checks import RunStateError

    init_ray(args.address)
    try:
        result = run_training(cfg, args.rois, vectors, run_id=args.run_id, prepared=args.prepared,
                              detector_weights=args.detector)
    except (ValueError, FileNotFoundError, RunStateError) as err:
        print(f"train: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - Ray wraps worker errors (TrainingFailedError); say it and fail
        print(_disk_full.message(err, "train") or f"train: run failed: {err}", file=sys.stderr)
        return 1
    if result.error:
        print(_disk_full.message(result.error, "train") or f"train: run {result.run_id} failed: {result.error}",
              file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    print(json.dumps({"run_id": result.run_id, "model": result.model_path, "run_dir": result.run_dir,
                      "epochs": len(result.history), "last": last}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
