"""Pre-flight checks for running on a multi-node Ray cluster: shared storage and token auth.

Pure functions (no Ray import): ``grounding.distributed.runtime`` calls them once it knows whether the
cluster has several nodes. They fail (or warn) *before* a job spends minutes starting workers, with a
message that says what to do, instead of Ray's late "Unable to set up cluster storage" error.

Why: Ray Train/Tune write checkpoints from every worker to ``storage_path`` and check a
``.validate_storage_marker`` file from every node; a path on the head's local disk is invisible to the
other nodes (reliability.md section 0). Token auth: ``ray start --head`` (what KubeRay runs) leaves auth
off unless a token exists, and then anyone who reaches the dashboard port can run code (reliability.md 3).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Mapping

#: Mount points that are shared by every node of our clusters (the KubeRay PVC in cluster/*.yaml).
SHARED_MOUNTS: tuple[str, ...] = ("/mnt/cluster_storage",)

#: Set to 1/true/yes when a local-looking path is on a filesystem mounted at the same place on every node.
SHARED_FS_ENV = "GROUNDING_SHARED_FS"

#: Extra shared mount points, separated by ':' (os.pathsep), e.g. "/nfs/projects:/lustre".
SHARED_MOUNTS_ENV = "GROUNDING_SHARED_MOUNTS"

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Schemes that still mean "this machine's disk".
_LOCAL_SCHEMES = frozenset({"file", "local"})
_TRUE = frozenset({"1", "true", "yes", "on"})


def uri_scheme(path: str) -> str | None:
    """``"s3"`` for ``"s3://bucket/x"``; ``None`` for a plain path."""
    match = _URI.match(path)
    return match.group(1).lower() if match else None


def shared_mounts(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The known shared mount points: :data:`SHARED_MOUNTS` plus those listed in ``GROUNDING_SHARED_MOUNTS``."""
    env = os.environ if env is None else env
    extra = [m for m in env.get(SHARED_MOUNTS_ENV, "").split(os.pathsep) if m.strip()]
    return SHARED_MOUNTS + tuple(posixpath.normpath(m.strip()) for m in extra)


def is_shared_path(path: str, env: Mapping[str, str] | None = None) -> bool:
    """True when every node of a cluster can see ``path``.

    Remote URIs (s3://, gs://, abfs://, hdfs://, ...) are shared; ``file://`` and ``local://`` are not.
    A plain path is shared when it is absolute and either lies, after normalisation (so ``..`` cannot
    escape), under a known shared mount, or ``GROUNDING_SHARED_FS`` is set. Relative paths are never
    shared: each node (and each Ray worker) resolves them against its own working directory.
    """
    env = os.environ if env is None else env
    scheme = uri_scheme(path)
    if scheme is not None and scheme not in _LOCAL_SCHEMES:
        return True
    local = path[len(scheme) + 3:] if scheme else path
    if not local.startswith("/"):
        return False
    if env.get(SHARED_FS_ENV, "").strip().lower() in _TRUE:
        return True
    norm = posixpath.normpath(local)
    return any(norm == m or norm.startswith(m.rstrip("/") + "/") for m in shared_mounts(env))


def check_storage_path(path: str, multi_node: bool, env: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` when ``path`` is local to one node of a multi-node cluster.

    Args:
        path: the resolved Ray Train/Tune storage path (``run.storage_path``, or the default
            ``<run.work_dir>/ray_storage``), a local path or a URI.
        multi_node: whether the Ray cluster has more than one alive node.
        env: environment to read ``GROUNDING_SHARED_FS`` / ``GROUNDING_SHARED_MOUNTS`` from
            (default ``os.environ``).

    Raises:
        ValueError: empty path, or a local path on a multi-node cluster that is not known to be shared.
    """
    if not path or not path.strip():
        raise ValueError("run.storage_path is empty: resolve the default (<run.work_dir>/ray_storage) first")
    if not multi_node or is_shared_path(path, env):
        return
    scheme = uri_scheme(path)
    local = path[len(scheme) + 3:] if scheme else path
    if not local.startswith("/"):
        raise ValueError(
            f"run.storage_path '{path}' is a relative path, but the Ray cluster has several nodes: each node "
            "and each Ray worker would resolve it against its own working directory. Use an absolute path on "
            "a shared mount (e.g. /mnt/cluster_storage/ray_storage) or a URI (s3://bucket/prefix)."
        )
    mounts = ", ".join(shared_mounts(env))
    raise ValueError(
        f"run.storage_path '{path}' is a local path, but the Ray cluster has several nodes: Ray Train/Tune "
        "workers on the other nodes cannot see this node's disk, so checkpoints would be lost or Ray would "
        "fail with 'Unable to set up cluster storage'. Use storage every node can reach: a URI "
        "(s3://bucket/prefix, gs://bucket/prefix, abfs://container@account.dfs.core.windows.net/prefix), "
        f"or a path under a shared mount ({mounts}; on KubeRay the PVC in cluster/*.yaml), e.g. "
        "--set run.storage_path=/mnt/cluster_storage/ray_storage. If this path already is on a filesystem "
        f"mounted at the same place on every node (NFS, Lustre), set {SHARED_FS_ENV}=1, or list the mount in "
        f"{SHARED_MOUNTS_ENV}."
    )


def _token_source(env: Mapping[str, str], home: Path | None) -> str | None:
    """Where Ray would read the token from, in Ray's precedence order; ``None`` when there is none."""
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    if env.get("RAY_AUTH_TOKEN_PATH", "").strip():
        return "RAY_AUTH_TOKEN_PATH"
    if home is not None and (home / ".ray" / "auth_token").is_file():
        return "~/.ray/auth_token"
    return None


def check_auth_for_cluster(address: str | None, env: Mapping[str, str] | None = None,
                           home: Path | None = None) -> list[str]:
    """Warnings (never the token itself) for joining a Ray cluster without token authentication.

    A job that starts its own local Ray (no address, no ``RAY_ADDRESS``) gets no warning: a fresh
    ``ray.init()`` turns token auth on by itself in Ray 2.60.

    Args:
        address: the ``--address`` given to the job, or ``None``.
        env: the environment (default ``os.environ``); read for ``RAY_ADDRESS``, ``RAY_AUTH_MODE``,
            ``RAY_AUTH_TOKEN`` and ``RAY_AUTH_TOKEN_PATH``.
        home: home directory for the default token file ``~/.ray/auth_token`` (default ``Path.home()``).

    Returns:
        Human-readable warnings; empty when everything looks right.
    """
    env = os.environ if env is None else env
    target = address or env.get("RAY_ADDRESS") or ""
    if not target.strip():
        return []
    mode = env.get("RAY_AUTH_MODE", "").strip().lower()
    if mode != "token":
        return [
            f"joining the Ray cluster at {target} with RAY_AUTH_MODE={mode or '<unset>'}: without token "
            "authentication anyone who can reach the dashboard/GCS ports can run code on the cluster "
            "(and our data may hold PHI). Start every node and this job with RAY_AUTH_MODE=token and the "
            "same token (RAY_AUTH_TOKEN from a secret, or RAY_AUTH_TOKEN_PATH); on KubeRay see cluster/README.md."
        ]
    home = Path.home() if home is None else home
    if _token_source(env, home) is None:
        return [
            f"RAY_AUTH_MODE=token but no token found for {target}: set RAY_AUTH_TOKEN (from a secret), "
            "RAY_AUTH_TOKEN_PATH, or run `ray get-auth-token` so ~/.ray/auth_token exists."
        ]
    return []
