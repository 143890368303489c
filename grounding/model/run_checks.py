"""Pre-flight checks before a Ray Train run starts: a run id when joining a cluster, and a sane run folder.

Why: Ray Train V2 resumes a run by ``(storage_path, name)`` from
``<storage>/<run_id>/checkpoint_manager_snapshot.json``. In Ray 2.60 that snapshot is written in
place (no temp file + rename), so a crash mid-write can leave truncated JSON; a checkpoint folder the
snapshot points to can be deleted by hand or by a bucket lifecycle rule; and our own ``checkpoint.pt``
can be truncated by a bad copy. Ray then fails late (after the workers started) with a message that
does not say what to do, or, worse, a job resubmitted without a fixed run id silently starts a new
run from epoch 0 (reliability.md A5-A7). These checks run in the driver before ``fit()`` and raise
:class:`RunStateError` naming the file and the way out.

No Ray import: plain files through pyarrow filesystems (local paths and URIs).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import pyarrow.fs as pafs

from grounding.data import storage
from grounding.model.checkpoint import CheckpointError, sidecar, verify

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


class RunStateError(RuntimeError):
    """The run folder cannot be resumed as it is; the message says which file and what to do."""


@dataclass(frozen=True)
class ResumeState:
    """What the pre-flight check found in ``<storage>/<run_id>``.

    Attributes:
        run_dir: the Ray run folder (path or URI).
        checkpoints: checkpoint folder names the snapshot references, oldest first.
        latest: folder name Ray will hand to ``get_checkpoint()``, or ``""`` for a fresh run.
    """

    run_dir: str
    checkpoints: tuple[str, ...] = ()
    latest: str = ""

    @property
    def fresh(self) -> bool:
        return not self.latest


def joining_cluster(address: Optional[str], env: Optional[Mapping[str, str]] = None) -> bool:
    """True when the job will join an existing cluster (``--address`` or ``RAY_ADDRESS``)."""
    env = os.environ if env is None else env
    return bool((address or "").strip() or env.get("RAY_ADDRESS", "").strip())


def require_run_id(job: str, run_id: str, address: Optional[str], env: Optional[Mapping[str, str]] = None) -> None:
    """Refuse an empty run id when joining a cluster (call before ``init_ray``, which sets ``RAY_ADDRESS``).

    A job on a cluster (RayJob) is resubmitted after a head/driver failure; without a fixed run id
    the resubmitted driver gets a new timestamped id and silently restarts from epoch 0. Locally a
    fresh id is fine.

    Raises:
        RunStateError: ``run_id`` is empty and ``address``/``RAY_ADDRESS`` is set.
    """
    if run_id.strip() or not joining_cluster(address, env):
        return
    raise RunStateError(
        f"{job}: no run id while joining the Ray cluster at {address or (env or os.environ).get('RAY_ADDRESS')}. "
        "A cluster job must have a fixed id so that a resubmitted job resumes its checkpoints instead of "
        "silently starting a new run: pass --run-id NAME (or --set run.run_id=NAME); reuse the same NAME "
        "to resume, a new NAME to start over."
    )


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _check_local_checkpoint_files(folder: Path, what: str) -> None:
    """Every ``*.pt`` in a checkpoint folder: sha256 sidecar matches, or (no sidecar) a complete zip."""
    for pt in sorted(folder.glob("*.pt")):
        if sidecar(pt).is_file():
            try:
                verify(pt)
            except CheckpointError as err:
                raise RunStateError(f"{what}: {err}") from None
        elif not zipfile.is_zipfile(pt):  # torch.save writes a zip; a cut file loses its central directory
            raise RunStateError(
                f"{what}: {pt} is truncated or corrupt ({pt.stat().st_size} bytes, not a complete torch file)."
            )


def check_resume_state(storage_path: str, run_id: str, verify_files: bool = True) -> ResumeState:
    """Check ``<storage_path>/<run_id>`` before ``fit()``; return what a resume would start from.

    A folder without a snapshot is a fresh run. Otherwise the snapshot must be valid JSON, every
    checkpoint it references must exist, and (local storage, ``verify_files``) the newest one's
    ``*.pt`` files must match their sha256 sidecars (or be complete torch zips).

    Args:
        storage_path: Ray Train ``storage_path`` (absolute local path or URI).
        run_id: the run name (``RunConfig.name``).
        verify_files: hash the newest checkpoint's files (local storage only).

    Raises:
        RunStateError: a truncated/invalid snapshot, a missing checkpoint folder or a corrupt file.
    """
    run_dir = storage.join(storage_path, run_id)
    fs, root = storage.resolve(run_dir)
    snap_path = f"{root.rstrip('/')}/{SNAPSHOT_FILE}"
    if not _exists(fs, snap_path):
        return ResumeState(run_dir=run_dir)
    advice = (
        f"Nothing was started. To resume run '{run_id}', restore the file from a backup or a storage "
        f"version; to start over, use a new run id (--run-id) or delete the folder {run_dir}."
    )
    raw = _read(fs, snap_path)
    try:
        snap = json.loads(raw.decode("utf-8"))
        results = snap["checkpoint_results"]
        names = [str(r["checkpoint_dir_name"]) for r in results]
        latest = snap.get("latest_checkpoint_result") or (results[-1] if results else None)
        latest_name = str(latest["checkpoint_dir_name"]) if latest else ""
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise RunStateError(
            f"run '{run_id}': the Ray run snapshot {run_dir}/{SNAPSHOT_FILE} is truncated or not valid JSON "
            f"({len(raw)} bytes; {type(err).__name__}), e.g. the driver crashed while Ray rewrote it. {advice}"
        ) from None
    wanted = list(dict.fromkeys(names + ([latest_name] if latest_name else [])))
    missing = [n for n in wanted if not _exists(fs, f"{root.rstrip('/')}/{n}")]
    if missing:
        raise RunStateError(
            f"run '{run_id}': the Ray run snapshot {run_dir}/{SNAPSHOT_FILE} references checkpoint folder(s) "
            f"that no longer exist: {', '.join(missing)} (deleted by hand or by a storage lifecycle rule). "
            f"{advice}"
        )
    if latest_name and verify_files and not storage.is_uri(run_dir):
        _check_local_checkpoint_files(
            Path(root, latest_name),
            f"run '{run_id}': the newest checkpoint {latest_name} (the one a resume would load) is unusable. "
            f"Nothing was started. Restore it from storage, or delete the run folder {run_dir} / use a new "
            "run id to start over",
        )
    return ResumeState(run_dir=run_dir, checkpoints=tuple(names), latest=latest_name)


__all__ = ["ResumeState", "RunStateError", "SNAPSHOT_FILE", "check_resume_state", "joining_cluster",
           "require_run_id"]
