"""``grounding bench <what>``: measured figures, printed as a table and written as JSON.

    grounding bench ingest [--manifest M.parquet] [--images 64]
    grounding bench rois | train | tune | e2e | all
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rayjobs._cli import build_config, common_parser, setup_logging

WHAT = ("ingest", "rois", "train", "tune", "e2e", "all")


def get_args_parser(add_help: bool = True):
    parser = common_parser(__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("what", choices=WHAT)
    parser.add_argument("--manifest", help="ingest: benchmark on this manifest (default: fresh synthetic DICOMs)")
    parser.add_argument("--images", type=int, default=64, help="synthetic images when no manifest is given")
    parser.add_argument("--sizes", default="1,4", help="dataset size factors for the scaling runs")
    parser.add_argument("--out", help="JSON output folder (default: <work_dir>/bench)")
    return parser


def _synthetic_manifest(cfg, images: int, folder: Path):
    from grounding.adapters.synthetic import synthetic_manifest
    from grounding.config import replace
    from grounding.synth.generator import generate

    synth = replace(cfg.synth, n_site_a=images // 2, n_site_b=images - images // 2, n_site_b_boxed=0,
                    n_site_c_patients=0)
    generate(synth, str(folder))
    return synthetic_manifest(str(folder), cfg.data.split_fractions, cfg.data.split_seed)


def bench_ingest(cfg, args) -> dict:
    from grounding import storage
    from grounding.prepare import PrepareOptions
    from grounding.ray_bench import bench_ingest as run

    folder = Path(storage.join(cfg.run.work_dir, "bench", "ingest-data"))
    manifest = storage.read_table(args.manifest) if args.manifest else _synthetic_manifest(cfg, args.images, folder)
    options = PrepareOptions(cfg.data.image_size, cfg.data.max_pixels, cfg.data.low_percentile,
                             cfg.data.high_percentile)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    return run(manifest, options, cfg.data.batch_size, cfg.data.rows_per_shard, sizes)


def print_ingest(result: dict) -> None:
    print(f"ingest (prepare) on {result['cpus']} CPU(s); Ray start {result['ray_start_s']} s (not included)")
    print(f"{'size':>5} {'images':>7} {'plain img/s':>12} {'ray img/s':>10} {'speed-up':>9} "
          f"{'plain peak MiB':>15} {'ray peak MiB':>13}")
    for r in result["runs"]:
        print(f"{r['factor']:>4}x {r['plain']['images']:>7} {r['plain']['images_per_s']:>12} "
              f"{r['ray']['images_per_s']:>10} {r['speedup']:>9} {r['plain']['peak_rss_mib']:>15} "
              f"{r['ray']['peak_rss_mib']:>13}")
    print(f"speed-up per core: {result['speedup_per_core']}")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    from grounding import storage

    out = Path(args.out or storage.join(cfg.run.work_dir, "bench"))
    out.mkdir(parents=True, exist_ok=True)
    todo = ("ingest", "rois", "train", "tune", "e2e") if args.what == "all" else (args.what,)
    results = {}
    for what in todo:
        start = time.perf_counter()
        if what == "ingest":
            results[what] = bench_ingest(cfg, args)
            print_ingest(results[what])
        else:
            print(f"bench {what}: not available yet", file=sys.stderr)
            continue
        results[what]["wall_s"] = round(time.perf_counter() - start, 1)
        storage.atomic_write_text(out / f"{what}.json", json.dumps(results[what], indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
