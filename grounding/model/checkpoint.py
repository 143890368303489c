"""Checkpoints: tensors and plain data only, written atomically, verified before loading.

Layout of a checkpoint directory (one per ``ray.train.report``) and of the exported model::

    checkpoint.pt            torch.save of a dict of tensors / str / int / float / lists (no objects)
    checkpoint.pt.sha256     "<hex>  checkpoint.pt" (``sha256sum -c`` compatible), written last
    config.json              the resolved GroundingConfig (human-readable copy; also inside the .pt)
    vocabulary.json          {"attributes": [...], "vocabulary_version": "..."}

The ``.pt`` dict holds: ``format``, ``model`` (unwrapped state_dict), ``config_json``, ``vocabulary``,
``vocabulary_version``, ``word_vectors_version``, ``epoch`` (last finished, 0-based), ``optimizer``,
``rng`` (torch/numpy/python states as tensors and ints), ``history`` (per-epoch metric dicts),
``best_model`` (state_dict of the lowest-validation-loss epoch) and ``extra``.

Loading always checks the sha256 first and then uses ``torch.load(weights_only=True)``; a tampered,
truncated or non-weights-only file raises :class:`CheckpointError` saying what to do.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from grounding.data.storage import atomic_path, atomic_write_text

FORMAT = "grounding-checkpoint/1"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be trusted or read; the message says why and what to do."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar(path: str | Path) -> Path:
    return Path(str(path) + ".sha256")


def capture_rng() -> dict[str, Any]:
    """torch / numpy / python RNG states as weights-only-loadable values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def checkpoint_due(epoch: int, every: int, final: bool) -> bool:
    """Checkpoint after 0-based ``epoch``? Every ``every``-th epoch (epochs every-1, 2*every-1, ...) and
    the ``final`` one, so a crash redoes at most ``every`` epochs and a finished run is always saved."""
    return final or (epoch + 1) % every == 0


def save_file(path: str | Path, payload: Mapping[str, Any]) -> str:
    """``torch.save`` atomically, then write the sha256 sidecar (atomically, last). Returns the sha."""
    path = Path(path)
    buf = io.BytesIO()
    # Serialised in memory, then written by Python: on a full disk torch.save to a path fails with an
    # opaque "unexpected pos" RuntimeError, a plain write with OSError(ENOSPC) the jobs can explain.
    torch.save(dict(payload), buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())
        digest = sha256_file(tmp)
    atomic_write_text(sidecar(path), f"{digest}  {path.name}\n")
    return digest


def save_checkpoint(
    directory: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    vocabulary: list[str] | tuple[str, ...],
    vocabulary_version: str,
    epoch: int,
    optimizer_state: Optional[Mapping[str, Any]] = None,
    history: Optional[list[dict]] = None,
    best_model_state: Optional[Mapping[str, torch.Tensor]] = None,
    word_vectors_version: str = "",
    rng: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
    filename: str = CHECKPOINT_FILE,
) -> Path:
    """Write a checkpoint directory (see module docstring). Returns the ``.pt`` path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(dict(config), sort_keys=True)
    payload = {
        "format": FORMAT,
        "model": dict(model_state),
        "config_json": config_json,
        "vocabulary": list(vocabulary),
        "vocabulary_version": str(vocabulary_version),
        "word_vectors_version": str(word_vectors_version),
        "epoch": int(epoch),
        "optimizer": dict(optimizer_state) if optimizer_state is not None else None,
        "rng": dict(rng) if rng is not None else capture_rng(),
        "history": list(history or []),
        "best_model": dict(best_model_state) if best_model_state is not None else None,
        "extra": dict(extra or {}),
    }
    atomic_write_text(directory / "config.json", json.dumps(dict(config), indent=2, sort_keys=True))
    atomic_write_text(
        directory / "vocabulary.json",
        json.dumps({"attributes": list(vocabulary), "vocabulary_version": str(vocabulary_version)}, indent=2),
    )
    path = directory / filename
    save_file(path, payload)
    return path


def verify(path: str | Path) -> None:
    """Check the file against its sha256 sidecar; raise :class:`CheckpointError` if it does not match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    side = sidecar(path)
    if not side.is_file():
        raise CheckpointError(
            f"{path}: no sha256 sidecar ({side.name}); refusing an unverified checkpoint. "
            "Re-export it with grounding, or if you trust the file write its sha256 there yourself."
        )
    expected = side.read_text().split()[0].strip().lower() if side.read_text().strip() else ""
    actual = sha256_file(path)
    if actual == expected:
        return
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: truncated or corrupt ({path.stat().st_size} bytes; sha256 {actual[:12]}... != recorded "
            f"{expected[:12]}...). Copy it again from the run's storage, or resume from the previous checkpoint."
        )
    raise CheckpointError(
        f"{path}: sha256 mismatch (file {actual[:12]}... != recorded {expected[:12]}...): the file was modified "
        "after it was written. Do not load it; restore the original from the run's storage."
    )


def load_file(path: str | Path, map_location: str | torch.device = "cpu", check_sha: bool = True) -> dict[str, Any]:
    """Verify, then ``torch.load(weights_only=True)``; never falls back to full unpickling."""
    if check_sha:
        verify(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - classify every failure into one clear message
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "UnpicklingError" in type(err).__name__:
            raise CheckpointError(
                f"{path}: not a weights-only checkpoint (it asks to unpickle arbitrary objects); refusing to load "
                "it. Only load checkpoints written by grounding from a source you trust."
            ) from None
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(err).__name__}); the file is truncated or "
            "corrupt. Copy it again or resume from the previous checkpoint."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} file")
    return payload


def load_checkpoint(directory_or_file: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint directory (or its ``.pt``/an exported ``model.pt``); adds ``config`` (dict)."""
    p = Path(directory_or_file)
    if p.is_dir():
        p = p / (CHECKPOINT_FILE if (p / CHECKPOINT_FILE).exists() else MODEL_FILE)
    payload = load_file(p, map_location)
    payload["config"] = json.loads(payload["config_json"])
    return payload


def export_model(
    out_dir: str | Path,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    config_yaml: str,
    vocabulary: list[str] | tuple[str, ...],
    vocabulary_version: str,
    epoch: int,
    word_vectors_version: str = "",
    extra: Optional[Mapping[str, Any]] = None,
) -> Path:
    """``<out>/model.pt`` + ``model.pt.sha256`` + ``config.yaml`` (inference needs only this file)."""
    out = Path(out_dir)
    path = save_checkpoint(
        out, model_state=model_state, config=config, vocabulary=vocabulary,
        vocabulary_version=vocabulary_version, epoch=epoch, word_vectors_version=word_vectors_version,
        extra=extra, filename=MODEL_FILE,
    )
    atomic_write_text(out / "config.yaml", config_yaml)
    return path


__all__ = [
    "CHECKPOINT_FILE", "CheckpointError", "FORMAT", "MODEL_FILE", "capture_rng", "checkpoint_due",
    "export_model",
    "load_checkpoint", "load_file", "load_model", "restore_rng", "save_checkpoint", "save_file", "sha256_file", "verify",
]


def load_model(path: str | Path, map_location: str | torch.device = "cpu"):
    """Exported ``model.pt`` (or a checkpoint dir) -> ``(GroundingModel in eval mode, GroundingConfig, payload)``.

    Uses the checkpoint's own config and its ``best_model`` weights when present.
    """
    from grounding.config import GroundingConfig
    from grounding.model.grounding_model import build_model

    payload = load_checkpoint(path, map_location)
    saved = dict(payload["config"])
    if "max_roi_area" not in saved.get("model", {}):  # trained before the switch: every ROI was a candidate
        saved["model"] = {**saved.get("model", {}), "max_roi_area": 1.0}
    cfg = GroundingConfig.from_dict(saved)
    state = payload.get("best_model") or payload["model"]
    feature_dim = int(state["embed.w1.0.weight" if "embed.w1.0.weight" in state else "embed.w1.weight"].shape[1])
    model = build_model(feature_dim, state["word_vectors"], state["negative_vectors"], cfg.model)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, cfg, payload
