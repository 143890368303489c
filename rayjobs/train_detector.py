"""``grounding train-detector``: supervised RetinaNet on the prepared detector rows (Ray Train).

    grounding train-detector --prepared runs/x/prepared --out runs/x/detector --run-id det-1

The same ``--run-id`` (and storage path) resumes from the last epoch checkpoint.
Writes ``<out>/detector.pt`` (state_dict), ``detector.pt.sha256``, ``detector.json``, ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from rayjobs._cli import build_config, get_args_parser as common_parser, setup_logging

log = logging.getLogger("rayjobs.train_detector")


def get_args_parser(add_help: bool = True):
    parser = common_parser("Ray Train: supervised RetinaNet (the supervised baseline)", add_help)
    parser.add_argument("--prepared", required=True, help="prepared-image cache folder (Parquet shards)")
    parser.add_argument("--out", required=True, help="output folder for detector.pt")
    parser.add_argument("--run-id", default=None, help="Ray Train run name; the same id resumes (default: run.run_id)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    from grounding.config import write_resolved
    from grounding.ray_detector import run_train_detector
    from grounding.ray_runtime import init_ray

    run_id = args.run_id or cfg.run.run_id or time.strftime("detector-%Y%m%d-%H%M%S")
    write_resolved(cfg, args.out)
    init_ray(args.address)
    try:
        result = run_train_detector(cfg, args.prepared, args.out, run_id)
    except (ValueError, FileNotFoundError) as err:
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
