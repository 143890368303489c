"""``grounding severity-cv``: P(severe) / P(mild) vs expert severity, K-fold CV by patient (Table 2).

    grounding severity-cv --predictions runs/default/severity_predictions.parquet --out runs/default/severity
    grounding severity-cv --dataset covid --root /data/covid --severity-csv scores.csv \
        --score-column geographic_extent --score-max 8 --checkpoint runs/default/model.pt --out runs/covid/severity
"""

from __future__ import annotations

import json
import sys

from grounding.data import input_checks as ic
from rayjobs._cli import build_config, check_inputs, clean_exit, common_parser, setup_logging

INPUTS = {"predictions": ic.require_severity_table, "root": ic.require_dataset_root,
          "severity_csv": ic.require_csv, "checkpoint": ic.require_checkpoint, "detector": ic.require_checkpoint,
          "out": ic.require_writable_folder}


def get_args_parser(add_help: bool = True):
    parser = common_parser(__doc__.splitlines()[0], add_help=add_help)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="Parquet with image_id, patient_id, p_severe, p_mild, score (0-1)")
    src.add_argument("--dataset", choices=["covid"], help="build the manifest from this dataset under --root")
    parser.add_argument("--root", help="dataset root folder (with --dataset)")
    parser.add_argument("--severity-csv", help="covid: severity table with a 'filename' column")
    parser.add_argument("--score-column", default="score", help="covid: severity column name")
    parser.add_argument("--score-max", type=float, default=8.0, help="covid: maximum of the severity scale")
    parser.add_argument("--checkpoint", help="grounding model checkpoint (with --dataset)")
    parser.add_argument("--detector", default="",
                        help="detector.pt (with --dataset; default: the detector reference in the checkpoint)")
    parser.add_argument("--out", default=None, help="output folder (default: <work_dir>/severity)")
    parser.add_argument("--folds", type=int, default=None, help="K (default: eval.folds)")
    parser.add_argument("--seed", type=int, default=None, help="fold seed (default: eval.seed)")
    parser.add_argument("--no-ray", action="store_true", help="run the folds in this process")
    return parser


def _dataset_table(args, cfg):
    try:
        from grounding.model.predict import predict_probabilities
    except ImportError:
        print("severity-cv: --checkpoint needs grounding.model.predict (predict_probabilities), which is not "
              "available in this installation", file=sys.stderr)
        return None
    from grounding.data.adapters.covid import covid_manifest
    from grounding.evaluation.severity import severity_table_from_manifest

    manifest, counts = covid_manifest(args.root, args.severity_csv, args.score_column, args.score_max,
                                      split_fractions=cfg.data.split_fractions, split_seed=cfg.data.split_seed)
    print(f"adapter covid: {json.dumps(counts)}")
    probabilities = predict_probabilities(manifest, args.checkpoint, cfg, args.detector)
    return severity_table_from_manifest(manifest, probabilities)


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS, work_dir=cfg.run.work_dir)
    from grounding.data import storage
    from grounding.evaluation.report import write_severity_outputs
    from grounding.evaluation.severity import severity_cv, validate_severity_table

    if args.dataset and not (args.root and args.checkpoint):
        print("severity-cv: --dataset needs --root and --checkpoint", file=sys.stderr)
        return 2
    if args.dataset:
        table = _dataset_table(args, cfg)
        if table is None:
            return 2
    else:
        table = validate_severity_table(storage.read_table(args.predictions), args.predictions)
    folds = args.folds or cfg.eval.folds
    seed = cfg.eval.seed if args.seed is None else args.seed
    if args.no_ray:
        summary, oof = severity_cv(table, folds, seed)
    else:
        from grounding.distributed.tasks import severity_cv_ray
        from grounding.distributed.runtime import init_ray

        init_ray(args.address)
        summary, oof = severity_cv_ray(table, folds, seed)
    out = args.out or storage.join(cfg.run.work_dir, "severity")
    paths = write_severity_outputs(out, summary, oof)
    for col, res in summary["columns"].items():
        m = res["metrics"]
        print(f"{col}: pearson {m['pearson_r']['mean']:.3f} +/- {m['pearson_r']['std']:.3f} "
              f"({m['pearson_r']['n_valid_folds']}/{summary['folds_used']} folds), "
              f"R2 {m['r2']['mean']:.3f}, MAE {m['mae']['mean']:.3f}, MSE {m['mse']['mean']:.4f}")
    print(f"severity-cv: {json.dumps(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
