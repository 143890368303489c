"""``grounding train-detector``: supervised RetinaNet on the prepared detector rows (Ray Train).

    grounding train-detector --prepared runs/x/prepared --out runs/x/detector --run-id det-1

The same ``--run-id`` (and storage path) resumes from the last epoch checkpoint.
Writes ``<out>/detector.pt`` (state_dict), ``detector.pt.sha256``, ``detector.json``, ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from grounding.data import input_checks as ic
from rayjobs._cli import (absolute, build_config, check_inputs, clean_exit, exclusive_run,
                          get_args_parser as common_parser, setup_logging)

INPUTS = {"prepared": ic.require_prepared, "out": ic.require_writable_folder}

log = logging.getLogger("rayjobs.train_detector")


def get_args_parser(add_help: bool = True):
    parser = common_parser("Ray Train: supervised RetinaNet (the supervised baseline)", add_help)
    parser.add_argument("--prepared", required=True, help="prepared-image cache folder (Parquet shards)")
    parser.add_argument("--out", required=True, help="output folder for detector.pt")
    parser.add_argument("--run-id", default=None, help="Ray Train run name; the same id resumes (default: run.run_id)")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    args.prepared = absolute(args.prepared)
    args.out = absolute(args.out)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS, work_dir=cfg.run.work_dir)
    from grounding.config import write_resolved
    from grounding.model.run_checks import RunStateError, require_run_id

    try:
        require_run_id("train-detector", args.run_id or cfg.run.run_id, args.address)  # before init_ray
    except RunStateError as err:
        print(str(err), file=sys.stderr)
        return 2
    run_id = args.run_id or cfg.run.run_id or time.strftime("detector-%Y%m%d-%H%M%S")
    write_resolved(cfg, args.out)
    with exclusive_run(cfg, run_id, "train-detector"):  # one driver per run id
        return _train(args, cfg, run_id)


def _train(args, cfg, run_id: str) -> int:
    from grounding.data import storage
    from grounding.distributed.detector import run_train_detector
    from grounding.distributed.runtime import init_ray
    from grounding.model.run_checks import RunStateError, check_resume_state

    init_ray(args.address)
    try:
        # same storage rule as run_train_detector; a damaged run folder fails before fit() (reliability A6/A7)
        check_resume_state(cfg.run.storage_path or os.path.abspath(storage.join(cfg.run.work_dir, "ray_storage")),
                           run_id)
        result = run_train_detector(cfg, args.prepared, args.out, run_id)
    except (ValueError, FileNotFoundError, RunStateError) as err:
        print(f"train-detector: {err}", file=sys.stderr)
        return 1
    finally:
        import ray

        if not args.address:
            ray.shutdown()
    print(json.dumps({"run_id": run_id, **result}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
