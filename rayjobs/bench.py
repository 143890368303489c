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
    parser.add_argument("--rois", help="train: ROI cache (default: <work_dir>/rois of a pipeline run, else synthetic)")
    parser.add_argument("--word-vectors", help="train: word-vector folder (default: <work_dir>/word_vectors)")
    parser.add_argument("--prepared", help="train: prepared images for the streaming-mode comparison")
    parser.add_argument("--detector", help="train: detector.pt for the streaming-mode comparison")
    parser.add_argument("--epochs", type=int, default=3, help="train: epochs per timed run")
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


def _read_pipeline_timings(cfg) -> dict:
    """Stage timings of the last ``grounding pipeline`` run in this work dir."""
    from grounding import storage

    path = storage.join(cfg.run.work_dir, "pipeline.json")
    if not storage.exists(path):
        raise SystemExit(f"bench e2e: run 'grounding pipeline --work-dir {cfg.run.work_dir}' first ({path} missing)")
    return json.loads(open(path).read())


def bench_rois(cfg, args) -> dict:
    from grounding.bench_rois import bench_rois as run

    d = cfg.detector
    return run(backbone=d.backbone.value, fpn_channels=d.fpn_channels, image_size=cfg.data.image_size,
               num_rois=d.num_rois, batch_size=d.extract_batch_size, n_images=args.images, num_threads=None,
               device="cuda" if _has_cuda() else "cpu", seed=0)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _default(path: str | None, cfg, name: str) -> str | None:
    from grounding import storage

    if path:
        return path
    candidate = storage.join(cfg.run.work_dir, name)
    return candidate if storage.exists(candidate) else None


def bench_train(cfg, args) -> dict:
    """Ray Train vs a plain loop on the cached ROIs; then cache vs streaming epoch time."""
    from grounding.bench_train import bench_train as run

    rois = _default(args.rois, cfg, "rois")
    wv_dir = _default(args.word_vectors, cfg, "word_vectors")
    vectors = None
    if rois and wv_dir:
        from grounding.word_vectors import load_attribute_vectors

        vectors = load_attribute_vectors(wv_dir)
    else:
        rois = None
    result = run(cfg, rois=rois, vectors=vectors, epochs=args.epochs, address=args.address)
    prepared = _default(args.prepared, cfg, "prepared")
    detector = args.detector or (_default(None, cfg, "detector/detector.pt"))
    if rois and prepared and detector:
        result["cache_vs_streaming"] = _cache_vs_streaming(cfg, rois, vectors, prepared, detector, args.epochs)
    return result


def _cache_vs_streaming(cfg, rois, vectors, prepared, detector, epochs) -> dict:
    import uuid

    from grounding.config import TrainMode, replace
    from grounding.ray_train import run_training

    out = {}
    for mode in (TrainMode.CACHE, TrainMode.STREAMING):
        run_cfg = replace(cfg, train=replace(cfg.train, mode=mode, num_workers=1),
                          optim=replace(cfg.optim, max_epochs=epochs, early_stop_patience=epochs + 1))
        res = run_training(run_cfg, rois, vectors, run_id=f"bench-{mode.value}-{uuid.uuid4().hex[:6]}",
                           prepared=prepared, detector_weights=detector)
        steady = [h["epoch_seconds"] for h in res.history[1:]] or [h["epoch_seconds"] for h in res.history]
        out[mode.value] = {"epoch_s": round(sum(steady) / max(len(steady), 1), 3), "fit_s": round(res.fit_seconds, 1),
                           "epochs": len(res.history)}
    out["streaming_over_cache"] = round(out["streaming"]["epoch_s"] / max(out["cache"]["epoch_s"], 1e-9), 1)
    return out


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
        elif what == "rois":
            results[what] = bench_rois(cfg, args)
            r = results[what]
            print(f"ROI extraction ({r['backbone']}, FPN {r['fpn_channels']}, {r['image_size']} px, N={r['num_rois']}, "
                  f"{r['device']}): {r['images_per_second']:.2f} images/s, "
                  f"{r['roi_parquet_bytes_per_image'] / 1024:.1f} KiB of ROI cache per image")
        elif what == "train":
            results[what] = bench_train(cfg, args)
            r = results[what]
            print(f"training samples/s: plain {r['plain']['samples_per_s']:.0f}, Ray Train "
                  f"{r['ray']['samples_per_s']:.0f}; Ray start-up {r['ray']['startup_s']:.1f} s, teardown "
                  f"{r['ray']['teardown_s']:.1f} s")
            if "cache_vs_streaming" in r:
                c = r["cache_vs_streaming"]
                print(f"epoch time: cache {c['cache']['epoch_s']} s, streaming {c['streaming']['epoch_s']} s "
                      f"({c['streaming_over_cache']}x)")
        elif what == "e2e":
            results[what] = _read_pipeline_timings(cfg)
            print(f"end to end: {results[what]}")
        else:
            print(f"bench {what}: see 'grounding tune' (trials/hour is printed at the end of a search)",
                  file=sys.stderr)
            continue
        results[what]["wall_s"] = round(time.perf_counter() - start, 1)
        storage.atomic_write_text(out / f"{what}.json", json.dumps(results[what], indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
