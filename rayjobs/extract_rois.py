"""``grounding extract-rois``: the frozen detector once per prepared image -> the ROI cache (Ray Data).

    grounding extract-rois --prepared runs/x/prepared --detector runs/x/detector/detector.pt --out runs/x/rois

Rerunning into the same ``--out`` only processes images not yet in the cache.
"""

from __future__ import annotations

import json
import sys

from grounding.data import input_checks as ic
from rayjobs._cli import (absolute, build_config, check_inputs, clean_exit, get_args_parser as common_parser,
                          setup_logging)

INPUTS = {"prepared": ic.require_prepared, "detector": ic.require_checkpoint,
          "out": ic.require_writable_folder}


def get_args_parser(add_help: bool = True):
    parser = common_parser("Ray Data: frozen detector once per image -> ROI cache", add_help)
    parser.add_argument("--prepared", required=True, help="prepared-image cache folder (Parquet shards)")
    parser.add_argument("--detector", required=True, help="detector.pt (detector.json + .sha256 next to it)")
    parser.add_argument("--out", required=True, help="ROI cache folder")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    args.prepared = absolute(args.prepared)
    args.out = absolute(args.out)
    args.detector = absolute(args.detector)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS)
    from grounding.detection.detector import WeightsError
    from grounding.distributed.detector import run_extract_rois
    from grounding.distributed.runtime import init_ray

    init_ray(args.address)
    try:
        result = run_extract_rois(cfg, args.prepared, args.detector, args.out)
    except (WeightsError, ValueError, FileNotFoundError) as err:
        print(f"extract-rois: {err}", file=sys.stderr)
        return 1
    finally:
        import ray

        if not args.address:
            ray.shutdown()
    print(json.dumps(result))
    return 0 if result["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
