"""A Tune search (HyperOpt when installed) where one trial raises, run in a subprocess by test_tune.py.

    python tests/tune_scenarios.py raising-trial OUT_DIR

The search runs in this process (``tune._run_search_here``, as the job's zero-CPU task would) with
``tune.trial_fn`` replaced by a wrapper defined here: Tune pickles it by value, so every trial actor
runs it. The first trial to start claims ``failing_trial.txt`` in the work dir (searchers such as HyperOpt
name trials by random ids) and raises on every attempt, after logging the attempt the way the real trial
does; the other trials run the real ``trial_fn``. Writes ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

def _raising_trial_fn(config: dict, context: dict) -> None:
    import ray.tune

    from grounding.config import GroundingConfig
    from grounding.config.search_space import trial_run_id
    from grounding.distributed import tune as tune_module

    trial_id = ray.tune.get_context().get_trial_id()
    work_dir = Path(GroundingConfig.from_dict(context["base"]).run.work_dir)
    marker = work_dir / "failing_trial.txt"
    try:  # the first trial to start claims the marker (O_EXCL): it fails on every attempt
        with open(marker, "x") as f:
            f.write(trial_id)
    except FileExistsError:
        pass
    if marker.read_text() == trial_id:
        tune_module._log_attempt(work_dir / "train" / trial_run_id(trial_id), trial_id)
        raise RuntimeError(f"injected failure in trial {trial_id}")
    return tune_module.trial_fn(config, context)  # in the trial actor the module is not patched


def raising_trial(out: Path) -> dict:
    import ray

    from grounding.bench.train import synthetic_roi_table
    from grounding.config import load_config
    from grounding.config.search_space import parse_space
    from grounding.data.storage import write_table
    from grounding.distributed import tune as tune_module
    from grounding.distributed.runtime import init_ray

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import write_test_vectors

    rois, wv = out / "rois.parquet", out / "wv"
    write_table(synthetic_roi_table(48, feature_dim=12), str(rois))
    write_test_vectors(wv)
    fixed = {"optim.batch_size": 16, "model.geometry_dim": 4, "optim.max_epochs": 2, "train.num_workers": 1,
             "train.cpus_per_worker": 0.99, "train.tensorboard": False, "train.checkpoints_to_keep": 1}
    space = parse_space({"metric": "val_loss", "mode": "min", "num_samples": 3, "search_alg": "hyperopt", "seed": 0,
                         "max_failures": 1, "scheduler": {"enabled": False}, "fixed": fixed,
                         "params": {"optim.lr": {"loguniform": [1e-3, 3e-2]}}}, "raising-trial")
    cfg = load_config(None, space.fixed_overrides() + [f"run.work_dir={out / 'work'}"])
    init_ray()  # a new local Ray; sets RAY_ADDRESS, which Train's placement-group cleaner needs
    tune_module.trial_fn = _raising_trial_fn
    outcome = tune_module._run_search_here(space, cfg, str(rois), str(wv), "raising", False)
    ray.shutdown()
    return {"rows": outcome.rows, "summary": outcome.summary, "best_yaml": outcome.best_yaml,
            "out_dir": outcome.out_dir, "searcher": type(tune_module._search_alg(space)).__name__}


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"raising-trial": raising_trial}[scenario](out_dir)
    (out_dir / "result.json").write_text(json.dumps(result, default=str))
