"""``grounding pipeline``: the whole method end to end on a local Ray or an existing cluster.

    grounding pipeline                                   # built-in synthetic data, local Ray, runs/default
    grounding pipeline --work-dir runs/x --config paper  # the paper's scale (a GPU cluster)
    grounding pipeline --config real --set datasets.detector.root=/data/rsna ...  # real data (README)
    RAY_ADDRESS=ray://head:10001 grounding pipeline --work-dir /mnt/cluster_storage/runs/x --set run.run_id=x
"""

from __future__ import annotations

import sys
import time

from rayjobs._cli import build_config, check_inputs, clean_exit, common_parser, exclusive, setup_logging


def get_args_parser(add_help: bool = True):
    parser = common_parser(__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("--fresh", action="store_true", help="redo every stage (default: skip finished ones)")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, {}, work_dir=cfg.run.work_dir)
    from grounding.data.dataset_roles import check_roots

    problems = check_roots(cfg.datasets)
    if problems:  # before Ray starts: one line per role
        print("\n".join(problems), file=sys.stderr)
        return 2
    from grounding.distributed.pipeline import run_pipeline
    from grounding.distributed.runtime import init_ray

    start = time.perf_counter()
    with exclusive(cfg.run.work_dir, "pipeline"):  # a second pipeline on this folder is refused
        init_ray(args.address)
        state = run_pipeline(cfg, fresh=args.fresh)
    total = time.perf_counter() - start
    print("\n[pipeline] stage timings (s): " + ", ".join(f"{k} {v}" for k, v in state.timings.items()))
    for name, clock in state.stages.items():
        if clock.get("startup_s") is not None:
            print(f"[pipeline] {name}: wall {clock['wall_s']} s, Ray Train start-up {clock['startup_s']} s + "
                  f"compute {clock['compute_s']} s (wall / (start-up + compute) = "
                  f"{clock['wall_over_startup_compute']})")
    if state.concurrent:
        print(f"[pipeline] side by side: {', '.join(state.concurrent)}")
    print(f"[pipeline] finished in {total / 60:.1f} min")
    print(f"[pipeline] report: {state.dir('evaluation') / 'report.md'}")
    print(f"[pipeline] severity: {state.dir('severity') / 'severity.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
