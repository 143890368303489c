"""Checkpoints: round trip (model, optimizer, RNG, history), tamper/truncation/pickle refusal."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from grounding.bench.train import synthetic_vectors
from grounding.model.checkpoint import (
    CheckpointError, capture_rng, export_model, load_checkpoint, load_file, load_model, restore_rng,
    save_checkpoint, save_file, sidecar,
)
from grounding.config import GroundingConfig
from grounding.model.grounding_model import build_model
from grounding.text.vocabulary import ATTRIBUTES, VOCABULARY_VERSION


def _model_and_opt():
    cfg = GroundingConfig().with_overrides({"model.roi_hidden": 8, "model.classifier_hidden": [8]})
    v = synthetic_vectors(6)
    model = build_model(10, v.vectors, v.negative_vectors, cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 10), torch.rand(1, 3, 4), torch.rand(1, 3), torch.ones(1, 3, dtype=torch.bool)).logits.sum().backward()
    opt.step()
    return cfg, model, opt


def _save(tmp_path, **kw):
    cfg, model, opt = _model_and_opt()
    path = save_checkpoint(
        tmp_path / "ck", model_state=model.state_dict(), config=cfg.to_dict(), vocabulary=ATTRIBUTES,
        vocabulary_version=VOCABULARY_VERSION, epoch=3, optimizer_state=opt.state_dict(),
        history=[{"epoch": 0, "val_loss": 1.5}], **kw,
    )
    return cfg, model, opt, path


def test_round_trip_restores_everything(tmp_path):
    cfg, model, opt, path = _save(tmp_path)
    assert (tmp_path / "ck" / "config.json").exists() and sidecar(path).exists()
    payload = load_checkpoint(tmp_path / "ck")
    assert payload["epoch"] == 3 and payload["vocabulary"] == list(ATTRIBUTES)
    assert payload["vocabulary_version"] == VOCABULARY_VERSION
    assert GroundingConfig.from_dict(payload["config"]) == cfg
    assert payload["history"] == [{"epoch": 0, "val_loss": 1.5}]
    for k, v in model.state_dict().items():
        assert torch.equal(payload["model"][k], v)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(payload["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_rng_round_trip():
    state = capture_rng()
    a = (torch.rand(2), np.random.rand(2), random.random())
    restore_rng(state)
    b = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_export_and_load_model(tmp_path):
    cfg, model, _ = _model_and_opt()
    export_model(tmp_path, model_state=model.state_dict(), config=cfg.to_dict(), config_yaml=cfg.to_yaml(),
                 vocabulary=ATTRIBUTES, vocabulary_version=VOCABULARY_VERSION, epoch=5)
    assert (tmp_path / "model.pt.sha256").read_text().endswith("  model.pt\n")
    loaded, cfg2, payload = load_model(tmp_path / "model.pt")
    assert cfg2 == cfg and not loaded.training and payload["epoch"] == 5
    x = (torch.randn(1, 3, 10), torch.rand(1, 3, 4), torch.rand(1, 3), torch.ones(1, 3, dtype=torch.bool))
    model.eval()
    torch.testing.assert_close(loaded(*x).logits, model(*x).logits)


def test_tampered_file_is_refused(tmp_path):
    *_, path = _save(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch.*modified"):
        load_checkpoint(tmp_path / "ck")


def test_truncated_file_is_refused_with_advice(tmp_path):
    *_, path = _save(tmp_path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*previous checkpoint"):
        load_checkpoint(path)
    # even with a matching sidecar (e.g. truncated before hashing) torch.load's failure is explained
    from grounding.model.checkpoint import sha256_file
    sidecar(path).write_text(f"{sha256_file(path)}  {path.name}\n")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_file(path)


def test_missing_sidecar_is_refused(tmp_path):
    *_, path = _save(tmp_path)
    sidecar(path).unlink()
    with pytest.raises(CheckpointError, match="no sha256 sidecar"):
        load_checkpoint(path)


class _Evil:
    """Unpickling this writes a marker file (stands in for arbitrary code execution)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    payload = {"format": "grounding-checkpoint/1", "model": {}, "evil": _Evil(str(marker))}
    if how == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    from grounding.model.checkpoint import sha256_file
    sidecar(path).write_text(f"{sha256_file(path)}  model.pt\n")  # attacker recomputed the hash
    with pytest.raises(CheckpointError, match="not a weights-only checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_save_file_is_atomic_when_torch_save_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_file(path, {"format": "grounding-checkpoint/1", "x": torch.ones(2)})
    good = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_file(path, {"format": "grounding-checkpoint/1", "x": torch.zeros(2)})
    assert path.read_bytes() == good and load_file(path)["x"].tolist() == [1.0, 1.0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_model_exported_before_max_roi_area_keeps_every_roi_a_candidate(tmp_path):
    cfg, model, _ = _model_and_opt()
    old = cfg.to_dict()
    del old["model"]["max_roi_area"]  # a config written before the switch existed
    export_model(tmp_path, model_state=model.state_dict(), config=old, config_yaml=cfg.to_yaml(),
                 vocabulary=ATTRIBUTES, vocabulary_version=VOCABULARY_VERSION, epoch=1)
    loaded, cfg2, _ = load_model(tmp_path / "model.pt")
    assert cfg2.model.max_roi_area == 1.0 and loaded.max_roi_area == 1.0
    assert GroundingConfig().model.max_roi_area < 1.0  # while new runs default to the restricted pool
