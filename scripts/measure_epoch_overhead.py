"""Per-epoch framework cost of ``grounding train`` (Ray Train, 1 worker), settings side by side.

    RAY_TMPDIR=/tmp/ray-x python scripts/measure_epoch_overhead.py [--epochs 12] [--rows 2000] [--out f.json]

Framework cost of an epoch = the wall time from one epoch's ``report_time`` (metrics ready, before
``ray.train.report``) to the next epoch's ``epoch_start_time``: the report barrier, the checkpoint, the
metrics file and the early-stopping check; none of it is training. Teardown = last report -> fit()
returns. Every setting trains the same synthetic ROI cache with the same seed in one Ray instance,
one after the other, so the ratios compare like with like; the losses are checked to be identical.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "before: Ray's 2 s poll, checkpoint every epoch": {"train.report_poll_s": 2.0,
                                                        "train.checkpoint_every": 1},
    "poll 0.1 s, checkpoint every epoch": {"train.report_poll_s": 0.1, "train.checkpoint_every": 1},
    "after: defaults (poll 0.1 s, checkpoint every 10)": {},
}
LOSSES = ("train_loss", "val_loss", "val_attribute_auc")


def measure(cfg, rois: str, vectors, run_id: str) -> dict:
    from grounding.distributed.train import run_training

    res = run_training(cfg, rois, vectors, run_id=run_id)
    fit_end = time.time()
    if res.error:
        raise RuntimeError(res.error)
    h = res.history
    gaps = [b["epoch_start_time"] - a["report_time"] for a, b in zip(h, h[1:])]
    return {"epochs": len(h), "fit_s": round(res.fit_seconds, 2), "startup_s": round(res.startup_s, 2),
            "compute_s": round(res.compute_s, 2),
            "per_epoch_framework_s_median": round(statistics.median(gaps), 3),
            "per_epoch_framework_s_mean": round(statistics.mean(gaps), 3),
            "teardown_s": round(fit_end - h[-1]["report_time"], 2),
            "wall_over_startup_compute": round(res.fit_seconds / (res.startup_s + res.compute_s), 3),
            "losses": [[e[k] for k in LOSSES] for e in h]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", help="also write the figures here (JSON)")
    args = parser.parse_args(argv)

    from grounding.bench.train import synthetic_roi_table, synthetic_vectors
    from grounding.config import GroundingConfig
    from grounding.distributed.runtime import init_ray
    from grounding.data.storage import write_table

    work = Path(tempfile.mkdtemp(prefix="epoch-overhead-"))
    rois = work / "rois.parquet"
    write_table(synthetic_roi_table(args.rows, feature_dim=12), str(rois))
    base = GroundingConfig().with_overrides({
        "run.work_dir": str(work), "train.num_workers": 1, "train.tensorboard": False,
        "optim.max_epochs": args.epochs, "optim.early_stop_patience": 1000, "optim.batch_size": 32,
        "model.roi_hidden": 16, "model.classifier_hidden": [16],
    })
    init_ray()
    results = {}
    for i, (name, overrides) in enumerate(SETTINGS.items()):
        cfg = base.with_overrides(overrides)
        results[name] = measure(cfg, str(rois), synthetic_vectors(8), f"overhead-{i}")
        r = results[name]
        print(f"{name}: per-epoch framework {r['per_epoch_framework_s_median']} s (median; mean "
              f"{r['per_epoch_framework_s_mean']}), start-up {r['startup_s']} s, compute {r['compute_s']} s, "
              f"teardown {r['teardown_s']} s, fit {r['fit_s']} s, wall/(start-up+compute) "
              f"{r['wall_over_startup_compute']}", flush=True)
    first, *others = results.values()
    same = all(o["losses"] == first["losses"] for o in others)
    print(f"losses identical across settings: {same}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": args.rows, "epochs": args.epochs, "results": results,
                                              "losses_identical": same}, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
