"""The `train` job: CLI contract, config to Ray, and resume by run id through Ray Train V2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from grounding.bench.train import synthetic_roi_table, synthetic_vectors
from grounding.config import GroundingConfig
from grounding.data.storage import write_table
from grounding.text.vocabulary import ATTRIBUTES
from helpers import write_test_vectors  # noqa: E402  (tests/ is on sys.path under pytest)


SMALL = [
    "--set", "optim.batch_size=16", "--set", "model.roi_hidden=16", "--set", "model.alpha_hidden=8",
    "--set", "model.classifier_hidden=[16]", "--set", "model.geometry_dim=4", "--set", "optim.lr=0.01",
]


def test_parser_and_missing_word_vectors_fail_cleanly(tmp_path, capsys):
    from rayjobs import train

    args = train.get_args_parser().parse_args(["--rois", "r", "--word-vectors", "w", "--run-id", "x"])
    assert (args.rois, args.word_vectors, args.run_id) == ("r", "w", "x")
    from test_bad_input import make_rois

    rc = train.main(["--rois", str(make_rois(tmp_path)), "--word-vectors", str(tmp_path / "nope")])
    assert rc == 2 and f"--word-vectors {tmp_path / 'nope'}: no such file" in capsys.readouterr().err


def test_loop_config_is_plain_data_and_checks_vectors(tmp_path):
    from grounding.distributed.train import make_loop_config

    cfg = GroundingConfig()
    lc = make_loop_config(cfg, synthetic_vectors(8), 12, "run-1", str(tmp_path), str(tmp_path / "s"))
    assert json.loads(json.dumps(lc)) == lc  # nothing but JSON-able data crosses into Ray
    assert GroundingConfig.from_dict(lc["grounding"]) == cfg and lc["local_mode"] is False
    bad = synthetic_vectors(8)
    bad.attributes = tuple(reversed(ATTRIBUTES))
    with pytest.raises(ValueError, match="vocabulary"):
        make_loop_config(cfg, bad, 12, "r", str(tmp_path), str(tmp_path))
    bad = synthetic_vectors(8)
    bad.vectors = bad.vectors[:5]
    with pytest.raises(ValueError, match="22"):
        make_loop_config(cfg, bad, 12, "r", str(tmp_path), str(tmp_path))


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
@pytest.mark.slow
def test_cli_train_then_resume_same_run_id_local_mode(tmp_path, ray_local, capsys):
    from grounding.model.checkpoint import load_model
    from rayjobs import train

    rois, wv, work = tmp_path / "rois.parquet", tmp_path / "wv", tmp_path / "work"
    write_table(synthetic_roi_table(80, feature_dim=12), str(rois))
    write_test_vectors(wv)
    common = ["--rois", str(rois), "--word-vectors", str(wv), "--run-id", "resume-me", "--work-dir", str(work),
              "--set", "train.num_workers=0", "--set", "train.checkpoint_every=1", *SMALL]
    assert train.main([*common, "--set", "optim.max_epochs=2"]) == 0
    run_dir = work / "train" / "resume-me"
    first = _history(run_dir)
    assert [h["epoch"] for h in first] == [0, 1]
    assert train.main([*common, "--set", "optim.max_epochs=4"]) == 0
    out = capsys.readouterr().out
    assert "resuming run resume-me at epoch 2" in out
    hist = _history(run_dir)
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]  # exactly 4 epochs, no duplicates
    assert hist[:2] == first  # the resumed run kept, not redid, epochs 0-1
    assert hist[3]["train_loss"] < hist[0]["train_loss"]
    model, cfg, payload = load_model(run_dir / "model.pt")
    assert cfg.optim.max_epochs == 4 and payload["epoch"] == 3
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    kept = sorted(p.name for p in (work / "ray_storage" / "resume-me" / "local_checkpoints").iterdir())
    assert kept == ["epoch=00002", "epoch=00003"]  # train.checkpoints_to_keep = 2, one per epoch
    # same run id with another architecture: refused, the run's files untouched
    rc = train.main([*common, "--set", "optim.max_epochs=5", "--set", "model.alpha_hidden=4"])
    assert rc != 0 and "different model section" in capsys.readouterr().err
    assert _history(run_dir) == hist


@pytest.mark.ray
@pytest.mark.slow
def test_worker_mode_resume_through_ray_checkpoints(tmp_path, ray_local):
    """num_workers=1: a real Ray Train worker; resume comes from ray.train.get_checkpoint()."""
    from grounding.distributed.train import run_training

    rois = tmp_path / "rois.parquet"
    write_table(synthetic_roi_table(48, feature_dim=12), str(rois))
    base = GroundingConfig().with_overrides({
        "run.work_dir": str(tmp_path / "work"), "train.num_workers": 1, "train.cpus_per_worker": 0.5,
        "optim.batch_size": 16, "model.roi_hidden": 8, "model.classifier_hidden": [8], "optim.max_epochs": 1,
    })
    r1 = run_training(base, str(rois), synthetic_vectors(8), run_id="w1")
    assert r1.error is None and [h["epoch"] for h in r1.history] == [0]
    r2 = run_training(base.with_overrides({"optim.max_epochs": 2}), str(rois), synthetic_vectors(8), run_id="w1")
    assert r2.error is None and [h["epoch"] for h in r2.history] == [0, 1]
    assert not (Path(r2.storage_path) / "w1" / "local_checkpoints").exists()  # Ray stored them


@pytest.mark.ray
@pytest.mark.slow
def test_streaming_mode_runs_the_frozen_detector_in_the_worker(tmp_path, ray_local):
    from grounding.detection.detector import build_retinanet, detector_meta, export_detector
    from grounding.data.prepared import pixels_to_bytes, prepared_table
    from grounding.distributed.train import run_training
    from grounding.data.schema import empty_manifest_row

    export_detector(build_retinanet("resnet18", 16, 64), str(tmp_path / "det"), detector_meta("resnet18", 16, 64, {}))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        r = empty_manifest_row()
        r.pop("report_text")
        r.update(image_id=f"i{i}", patient_id=f"p{i}", split="train" if i < 8 else "val", purpose="grounding",
                 attributes=["left", "severe"] if i % 2 else [], width=64, height=64, image_size=64,
                 pixels=pixels_to_bytes(rng.integers(0, 255, (64, 64), dtype=np.uint8)), boxes_prepared=[])
        rows.append(r)
    rows[3]["pixels"] = b"broken"  # one unreadable image is dropped, the run goes on
    write_table(prepared_table(rows), str(tmp_path / "prepared.parquet"))
    cfg = GroundingConfig().with_overrides({
        "run.work_dir": str(tmp_path / "work"), "train.num_workers": 0, "train.mode": "streaming",
        "optim.max_epochs": 1, "optim.batch_size": 4, "detector.num_rois": 5, "model.roi_hidden": 8,
    })
    res = run_training(cfg, "", synthetic_vectors(64), run_id="s1", prepared=str(tmp_path / "prepared.parquet"),
                       detector_weights=str(tmp_path / "det" / "detector.pt"))
    assert res.error is None and len(res.history) == 1
    assert res.history[0]["train_samples"] == 7  # 8 train rows, 1 unreadable
    assert np.isfinite(res.history[0]["train_loss"])


def test_checkpoint_cadence_every_k_epochs_and_the_last():
    from grounding.model.checkpoint import checkpoint_due

    saved = [e for e in range(8) if checkpoint_due(e, 3, final=e == 7)]
    assert saved == [2, 5, 7]  # a crash redoes at most 3 epochs; the finished run is always saved
    assert [e for e in range(4) if checkpoint_due(e, 1, final=False)] == [0, 1, 2, 3]
    assert checkpoint_due(0, 10, final=True)  # early stopping after the first epoch still saves


def test_fit_clock_counts_only_this_fits_epochs():
    from grounding.distributed.train import fit_clock

    hist = [{"epoch_start_time": 90.0, "compute_s": 5.0},  # a previous fit (resumed run)
            {"epoch_start_time": 120.0, "compute_s": 2.0}, {"epoch_start_time": 123.0, "compute_s": 4.5}]
    assert fit_clock(hist, fit_start=100.0, fit_seconds=30.0) == (20.0, 4.5)
    assert fit_clock(hist[:1], fit_start=100.0, fit_seconds=7.0) == (7.0, 0.0)  # nothing left to train


@pytest.mark.parametrize("key, value", [("train.checkpoint_every", 0), ("train.report_poll_s", 0.0)])
def test_bad_cadence_settings_are_refused(key, value):
    from grounding.config import ConfigError

    with pytest.raises(ConfigError, match=key.split(".")[1]):
        GroundingConfig().with_overrides({key: value})
