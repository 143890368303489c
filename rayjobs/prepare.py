"""``grounding prepare``: manifest (or a dataset root) -> decoded, normalised, resized image shards.

    grounding prepare --manifest runs/default/synth/manifest.parquet --out runs/default/prepared
    grounding prepare --dataset rsna --root /data/rsna --out /mnt/cluster_storage/rsna/prepared
"""

from __future__ import annotations

import json
import sys

from grounding.data import input_checks as ic
from rayjobs._cli import build_config, check_inputs, clean_exit, common_parser, setup_logging

INPUTS = {"manifest": ic.require_manifest, "root": ic.require_dataset_root,
          "severity_csv": ic.require_csv, "out": ic.require_writable_folder}


def get_args_parser(add_help: bool = True):
    parser = common_parser(__doc__.splitlines()[0], add_help=add_help)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest Parquet (schema: README 'Manifest')")
    src.add_argument("--dataset", choices=["synthetic", "rsna", "chestxray8", "mimic", "covid"],
                     help="build the manifest from this dataset's own layout under --root")
    parser.add_argument("--root", help="dataset root folder (with --dataset)")
    parser.add_argument("--severity-csv", help="covid: severity table with a 'filename' column")
    parser.add_argument("--score-column", default="score", help="covid: severity column name")
    parser.add_argument("--score-max", type=float, default=8.0, help="covid: maximum of the severity scale")
    parser.add_argument("--out", default=None, help="output folder (default: <work_dir>/prepared)")
    return parser


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS, work_dir=cfg.run.work_dir)
    from grounding.data import storage
    from grounding.config import write_resolved
    from grounding.data.prepare import PrepareOptions
    from grounding.distributed.prepare import run_prepare
    from grounding.distributed.runtime import init_ray

    out = args.out or storage.join(cfg.run.work_dir, "prepared")
    storage.makedirs(out)
    if args.manifest:
        manifest = storage.read_table(args.manifest)
    else:
        if not args.root:
            print("prepare: --dataset needs --root", file=sys.stderr)
            return 2
        from grounding.data.adapters.registry import build_manifest

        options = {"split_fractions": cfg.data.split_fractions, "split_seed": cfg.data.split_seed}
        if args.dataset == "covid":
            options.update(severity_csv=args.severity_csv, score_column=args.score_column, score_max=args.score_max)
        manifest, counts = build_manifest(args.dataset, args.root, **options)
        print(f"adapter {args.dataset}: {json.dumps(counts)}")
    storage.write_table(manifest, storage.join(out, "manifest.parquet"))
    write_resolved(cfg, out)
    init_ray(args.address)
    options = PrepareOptions(cfg.data.image_size, cfg.data.max_pixels, cfg.data.low_percentile,
                             cfg.data.high_percentile)
    summary = run_prepare(manifest, out, options, cfg.data.batch_size, cfg.data.rows_per_shard,
                          engine=cfg.data.engine)
    print(f"prepare: {json.dumps(summary)}")
    print(f"prepared images: {storage.join(out, 'images')}  quarantine: {storage.join(out, 'quarantine.parquet')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
