"""``grounding bench <what>``: measured figures, printed as a table and written as JSON.

    grounding bench all --work-dir runs/default          # every section at 1x and 4x: all.json + table.md
    grounding bench all --work-dir runs/default --no-ray # Ray-free sections only (a GPU box without Ray)
    grounding bench ingest [--manifest M.parquet] [--images 64] [--sizes 1,4]
    grounding bench rois | train | streaming | tune | e2e
    grounding bench scale --rows 10000,100000            # peak memory of prepare + extract-rois, one Ray per size
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from grounding.data import input_checks as ic
from rayjobs._cli import build_config, check_inputs, clean_exit, common_parser, setup_logging

WHAT = ("ingest", "rois", "train", "streaming", "tune", "e2e", "scale", "all")
INPUTS = {"manifest": ic.require_manifest, "rois": ic.require_rois, "word_vectors": ic.require_word_vectors,
          "prepared": ic.require_prepared, "detector": ic.require_checkpoint, "out": ic.require_writable_folder}


def get_args_parser(add_help: bool = True):
    parser = common_parser(__doc__.splitlines()[0], add_help=add_help)
    parser.add_argument("what", choices=WHAT)
    parser.add_argument("--manifest", help="ingest: benchmark on this manifest (default: fresh synthetic DICOMs)")
    parser.add_argument("--images", type=int, default=64, help="synthetic images when no manifest is given")
    parser.add_argument("--sizes", default="1,4", help="dataset size factors for the scaling runs")
    parser.add_argument("--rois", help="train: ROI cache (default: <work_dir>/rois of a pipeline run, else synthetic)")
    parser.add_argument("--word-vectors", help="train: word-vector folder (default: <work_dir>/word_vectors)")
    parser.add_argument("--prepared", help="train: prepared images for the streaming-mode comparison")
    parser.add_argument("--detector", help="train: detector.pt for the streaming-mode comparison")
    parser.add_argument("--epochs", type=int, default=3, help="train: epochs per timed run")
    parser.add_argument("--out", help="JSON output folder (default: <work_dir>/bench)")
    parser.add_argument("--no-ray", action="store_true", help="all: only the Ray-free sections (rois, plain loop)")
    parser.add_argument("--device", default="auto", help="all/rois: cpu, cuda or auto")
    parser.add_argument("--sections", help="all: comma-separated subset of ingest,rois,train,streaming,tune,e2e")
    parser.add_argument("--tune-trials", type=int, default=4, help="tune: trials per size")
    parser.add_argument("--rows", default="10000,100000",
                        help="scale: manifest row counts, each in a fresh process with its own Ray")
    parser.add_argument("--e2e-profile", default="smoke",
                        help="e2e: the pipeline profile to time (smoke, default, claim, ...)")
    return parser


def _synthetic_manifest(cfg, images: int, folder: Path):
    from grounding.data.adapters.synthetic import synthetic_manifest
    from grounding.config import replace
    from grounding.synth.generator import generate

    synth = replace(cfg.synth, n_site_a=images // 2, n_site_b=images - images // 2, n_site_b_boxed=0,
                    n_site_c_patients=0)
    generate(synth, str(folder))
    return synthetic_manifest(str(folder), cfg.data.split_fractions, cfg.data.split_seed)


def bench_ingest(cfg, args) -> dict:
    from grounding.data import storage
    from grounding.data.prepare import PrepareOptions
    from grounding.distributed.bench_ingest import bench_ingest as run

    folder = Path(storage.join(cfg.run.work_dir, "bench", "ingest-data"))
    manifest = storage.read_table(args.manifest) if args.manifest else _synthetic_manifest(cfg, args.images, folder)
    options = PrepareOptions(cfg.data.image_size, cfg.data.max_pixels, cfg.data.low_percentile,
                             cfg.data.high_percentile)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    return run(manifest, options, cfg.data.batch_size, cfg.data.rows_per_shard, sizes)


def print_ingest(result: dict) -> None:
    print(f"ingest (prepare) on {result['cpus']} CPU(s); Ray start {result['ray_start_s']} s (not included)")
    print(f"{'size':>5} {'images':>7} {'plain img/s':>12} {'Ray Data':>9} {'speed-up':>9} {'Ray tasks':>10} "
          f"{'speed-up':>9} {'plain MiB':>10} {'Ray Data MiB':>13} {'tasks MiB':>10}")
    for r in result["runs"]:
        print(f"{r['factor']:>4}x {r['plain']['images']:>7} {r['plain']['images_per_s']:>12} "
              f"{r['ray']['images_per_s']:>9} {r['speedup']:>9} {r['ray_tasks']['images_per_s']:>10} "
              f"{r['speedup_tasks']:>9} {r['plain']['peak_rss_mib']:>10} {r['ray']['peak_rss_mib']:>13} "
              f"{r['ray_tasks']['peak_rss_mib']:>10}")
    print(f"speed-up per core at the largest size: Ray Data {result['speedup_per_core']}, "
          f"Ray tasks {result['speedup_per_core_tasks']}")


def bench_rois(cfg, args) -> dict:
    from grounding.bench.rois import bench_rois_for
    from grounding.model.predict import resolve_device

    return bench_rois_for(cfg, args.images, str(resolve_device(args.device)))


def _default(path: str | None, cfg, name: str) -> str | None:
    from grounding.data import storage

    if path:
        return path
    candidate = storage.join(cfg.run.work_dir, name)
    return candidate if storage.exists(candidate) else None


def bench_train(cfg, args) -> dict:
    """Ray Train vs a plain loop on the cached ROIs; then cache vs streaming epoch time."""
    from grounding.distributed.bench_train import bench_train as run

    rois = _default(args.rois, cfg, "rois")
    wv_dir = _default(args.word_vectors, cfg, "word_vectors")
    vectors = None
    if rois and wv_dir:
        from grounding.text.word_vectors import load_attribute_vectors

        vectors = load_attribute_vectors(wv_dir)
    else:
        rois = None
    result = run(cfg, rois=rois, vectors=vectors, epochs=args.epochs, address=args.address)
    prepared = _default(args.prepared, cfg, "prepared")
    detector = args.detector or (_default(None, cfg, "detector/detector.pt"))
    if rois and prepared and detector:
        from grounding.distributed.bench_train import cache_vs_streaming

        result["cache_vs_streaming"] = cache_vs_streaming(cfg, rois, vectors, prepared, detector, args.epochs)
    return result


def suite(cfg, args, out: Path, sections: tuple[str, ...]) -> dict:
    from grounding.distributed.bench_suite import SECTIONS, SuiteOptions, run_suite

    opts = SuiteOptions(work_dir=cfg.run.work_dir, out_dir=str(out), sizes=tuple(int(s) for s in args.sizes.split(",")),
                        sections=sections or SECTIONS, epochs=args.epochs, tune_trials=args.tune_trials,
                        ray=not args.no_ray, device=args.device, e2e_profile=args.e2e_profile)
    return run_suite(cfg, opts, address=args.address)


@clean_exit
def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    cfg = build_config(args)
    check_inputs(args, INPUTS, work_dir=cfg.run.work_dir)
    from grounding.data import storage

    out = Path(args.out or storage.join(cfg.run.work_dir, "bench"))
    out.mkdir(parents=True, exist_ok=True)
    if args.what in ("all", "streaming", "tune", "e2e"):
        sections = tuple(args.sections.split(",")) if args.sections else (() if args.what == "all" else (args.what,))
        try:
            suite(cfg, args, out, sections)
        except (FileNotFoundError, ValueError) as err:  # missing pipeline outputs, unknown section names
            print(f"bench: {err}", file=sys.stderr)
            return 2
        print((out / "table.md").read_text())
        print(f"results: {out / 'all.json'}, {out / 'table.md'}")
        return 0
    start = time.perf_counter()
    if args.what == "ingest":
        result = bench_ingest(cfg, args)
        print_ingest(result)
    elif args.what == "scale":
        from grounding.distributed.bench_scale import bench_scale, markdown

        result = bench_scale(tuple(int(r) for r in args.rows.split(",")), out / "scale-data", args.images,
                             cfg.data.image_size)
        storage.atomic_write_text(out / "scale.md", markdown(result))
        print(markdown(result))
    elif args.what == "rois":
        result = bench_rois(cfg, args)
        print(f"ROI extraction ({result['backbone']}, FPN {result['fpn_channels']}, {result['image_size']} px, "
              f"N={result['num_rois']} {result['roi_pool']}, "
              f"{result['roi_features']} {result['feature_dim']}-d, "
              f"{result['device']}): {result['images_per_second']:.2f} images/s, "
              f"{result['roi_parquet_bytes_per_image'] / 1024:.1f} KiB of ROI cache per image")
    else:
        result = bench_train(cfg, args)
        print(f"training samples/s: plain {result['plain']['samples_per_s']:.0f}, Ray Train "
              f"{result['ray']['samples_per_s']:.0f}; Ray start-up {result['ray']['startup_s']:.1f} s, teardown "
              f"{result['ray']['teardown_s']:.1f} s")
        if "cache_vs_streaming" in result:
            c = result["cache_vs_streaming"]
            print(f"epoch time: cache {c['cache']['epoch_s']} s, streaming {c['streaming']['epoch_s']} s "
                  f"({c['streaming_over_cache']}x)")
    result["wall_s"] = round(time.perf_counter() - start, 1)
    storage.atomic_write_text(out / f"{args.what}.json", json.dumps(result, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
