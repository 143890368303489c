"""``grounding tune``: Ray Tune search (ASHA + Optuna) over the grounding model on the ROI cache.

Example (8 small trials on a laptop)::

    grounding tune --space tune_spaces/smoke.yaml --rois runs/dev/rois \
        --word-vectors runs/dev/word_vectors --name smoke-1 --work-dir runs/dev

Outputs in ``<work_dir>/tune/<name>/``: results.csv/.parquet, metric_vs_params.png, best.yaml
(``grounding train --config .../best.yaml`` retrains the winner), best.json, summary.json.
The same ``--name`` again restores an interrupted search (finished trials are not re-run).
"""

from __future__ import annotations

import json
import logging
import sys

from grounding.data import input_checks as ic
from rayjobs._cli import build_config, check_inputs, clean_exit, common_parser, exclusive_run, setup_logging

log = logging.getLogger("grounding.tune")
INPUTS = {"space": ic.require_yaml_mapping, "rois": ic.require_rois, "word_vectors": ic.require_word_vectors}


def get_args_parser(add_help: bool = True):
    parser = common_parser("Ray Tune search over the grounding model (Train V2 trials).", add_help=add_help)
    parser.add_argument("--space", required=True, help="search space YAML (tune_spaces/*.yaml)")
    parser.add_argument("--rois", required=True, help="ROI cache (Parquet file or folder) from extract-rois")
    parser.add_argument("--word-vectors", required=True, help="folder written by `grounding word-vectors`")
    parser.add_argument("--name", required=True, help="experiment name; the same name again resumes it")
    parser.add_argument("--retry-errored", action="store_true", help="on resume, also rerun ERROR trials")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    from grounding.config.search_space import SearchSpaceError, check_against_config, load_space

    check_inputs(args, INPUTS)
    try:
        space = load_space(args.space)
        args.overrides = space.fixed_overrides() + list(args.overrides)  # CLI --set wins over `fixed`
        cfg = build_config(args)
        check_against_config(space, cfg)
        from grounding.text.word_vectors import load_attribute_vectors

        load_attribute_vectors(args.word_vectors)  # fail here, not in every trial
    except SearchSpaceError as err:
        print(f"tune: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"tune: cannot load word vectors from {args.word_vectors}: {err}", file=sys.stderr)
        return 2
    check_inputs(args, {}, work_dir=cfg.run.work_dir)
    with exclusive_run(cfg, args.name, "tune"):  # one driver per experiment name
        return _search(args, cfg, space)


def _search(args, cfg, space) -> int:
    from grounding.distributed.runtime import init_ray
    from grounding.distributed.tune import run_search
    from grounding.config.search_space import SearchSpaceError

    init_ray(args.address)
    try:
        out = run_search(space, cfg, args.rois, args.word_vectors, args.name, retry_errored=args.retry_errored)
    except (SearchSpaceError, ValueError, FileNotFoundError) as err:
        print(f"tune: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"name": args.name, "out_dir": out.out_dir, "best_config": out.best_yaml,
                      "restored": out.restored, **out.summary}, default=str))
    if not out.best_yaml:
        print(f"tune: no trial reported a finite {space.metric}; no best config was written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
