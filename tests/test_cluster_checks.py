"""Shared-storage guard and token-auth warnings (grounding/distributed/cluster_checks.py)."""

from __future__ import annotations

import pytest

from grounding.distributed.cluster_checks import (
    SHARED_FS_ENV,
    SHARED_MOUNTS_ENV,
    check_auth_for_cluster,
    check_storage_path,
    is_shared_path,
    uri_scheme,
)


@pytest.mark.parametrize(
    "path",
    ["s3://bucket/runs", "gs://b/p", "abfs://c@acct.dfs.core.windows.net/p", "hdfs://nn:8020/x",
     "S3://Bucket/x", "/mnt/cluster_storage", "/mnt/cluster_storage/ray_storage",
     "/mnt/cluster_storage/runs/../ray_storage"],
)
def test_shared_paths_pass_on_multi_node(path):
    check_storage_path(path, multi_node=True, env={})
    assert is_shared_path(path, env={})


@pytest.mark.parametrize(
    "path",
    ["/tmp/ray_storage", "/home/me/runs", "file:///tmp/x", "local:///tmp/x",
     "/mnt/cluster_storage_local/x",  # prefix of the mount name, not under it
     "/mnt/cluster_storage/../../etc/x"],  # .. escapes the mount
)
def test_local_paths_fail_on_multi_node_with_a_helpful_message(path):
    with pytest.raises(ValueError) as err:
        check_storage_path(path, multi_node=True, env={})
    msg = str(err.value)
    assert path in msg and "several nodes" in msg
    assert "s3://" in msg and "/mnt/cluster_storage" in msg and SHARED_FS_ENV in msg


def test_relative_path_fails_even_when_marked_shared():
    with pytest.raises(ValueError, match="relative path"):
        check_storage_path("runs/default/ray_storage", multi_node=True, env={SHARED_FS_ENV: "1"})


def test_single_node_accepts_any_path():
    for path in ("/tmp/x", "runs/default/ray_storage", "file:///tmp/x"):
        check_storage_path(path, multi_node=False, env={})


def test_empty_path_is_an_error_even_on_one_node():
    with pytest.raises(ValueError, match="empty"):
        check_storage_path("  ", multi_node=False, env={})


@pytest.mark.parametrize("flag, ok", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_shared_fs_env_marks_local_absolute_paths_shared(flag, ok):
    env = {SHARED_FS_ENV: flag}
    if ok:
        check_storage_path("/nfs/team/ray_storage", multi_node=True, env=env)
    else:
        with pytest.raises(ValueError):
            check_storage_path("/nfs/team/ray_storage", multi_node=True, env=env)


def test_extra_shared_mounts_from_env():
    env = {SHARED_MOUNTS_ENV: "/nfs/team:/lustre/"}
    check_storage_path("/nfs/team/ray_storage", multi_node=True, env=env)
    check_storage_path("/lustre/x", multi_node=True, env=env)
    with pytest.raises(ValueError, match="/nfs/team"):  # the message lists the configured mounts
        check_storage_path("/nfs/other/x", multi_node=True, env=env)


def test_uri_scheme():
    assert uri_scheme("s3://b/x") == "s3"
    assert uri_scheme("GS://b") == "gs"
    assert uri_scheme("/mnt/x") is None
    assert uri_scheme("C:/x") is None


def test_no_warning_for_a_local_ray(tmp_path):
    assert check_auth_for_cluster(None, env={}, home=tmp_path) == []
    assert check_auth_for_cluster("", env={"RAY_ADDRESS": ""}, home=tmp_path) == []


@pytest.mark.parametrize("mode", [None, "disabled", "TOKEN-ish"])
def test_warns_when_joining_without_token_mode(tmp_path, mode):
    env = {} if mode is None else {"RAY_AUTH_MODE": mode}
    warnings = check_auth_for_cluster("10.0.0.5:6379", env=env, home=tmp_path)
    assert len(warnings) == 1 and "RAY_AUTH_MODE=token" in warnings[0] and "10.0.0.5:6379" in warnings[0]


def test_ray_address_env_counts_as_joining(tmp_path):
    warnings = check_auth_for_cluster(None, env={"RAY_ADDRESS": "http://head:8265"}, home=tmp_path)
    assert len(warnings) == 1 and "http://head:8265" in warnings[0]


def test_token_mode_with_a_token_source_is_quiet(tmp_path):
    assert check_auth_for_cluster("h:6379", env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cr3t-value"},
                                  home=tmp_path) == []
    assert check_auth_for_cluster("h:6379", env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/run/t"},
                                  home=tmp_path) == []
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x")
    assert check_auth_for_cluster("h:6379", env={"RAY_AUTH_MODE": "token"}, home=tmp_path) == []


def test_token_mode_without_any_token_warns_and_never_echoes_secrets(tmp_path):
    warnings = check_auth_for_cluster("h:6379", env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": " "},
                                      home=tmp_path)
    assert len(warnings) == 1 and "no token" in warnings[0]
    secret = "abcdef0123456789-very-secret"
    for env in ({"RAY_AUTH_TOKEN": secret}, {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": secret}):
        assert all(secret not in w for w in check_auth_for_cluster("h:6379", env=env, home=tmp_path))


# -- cluster/local_cluster.sh: a real 3-node cluster on this machine ---------------------------------
_PROBE = r"""
import json, ray
ray.init(address=__import__("os").environ["RAY_ADDRESS"], log_to_driver=False)

@ray.remote(num_cpus=1)
def where():
    return ray.get_runtime_context().get_node_id()

nodes = {n: ray.get(where.options(resources={f"node_{n}": 1}).remote()) for n in ("w1", "w2")}
alive = [n for n in ray.nodes() if n["Alive"]]
print(json.dumps({"nodes": nodes, "alive": len(alive), "cpus": ray.cluster_resources().get("CPU", 0)}))
"""


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_local_three_node_cluster_runs_a_task_on_each_worker(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = root / "cluster" / "local_cluster.sh"
    # Short private dir (Unix socket paths are limited) and a port away from other engineers' Rays.
    lc_dir = f"/tmp/grlct_{os.getpid()}"
    env = {**os.environ, "GROUNDING_LC_DIR": lc_dir, "GROUNDING_LC_PORT": "6393"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=800)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "127.0.0.1:6393" in started.stdout
        token = Path(lc_dir, "auth_token").read_text().strip()
        assert token and token not in started.stdout + started.stderr  # the token is never printed
        probe_env = {**env, "RAY_ADDRESS": "127.0.0.1:6393", "RAY_AUTH_MODE": "token",
                     "RAY_AUTH_TOKEN_PATH": f"{lc_dir}/auth_token"}
        probe = subprocess.run([sys.executable, "-c", _PROBE], env=probe_env, capture_output=True, text=True,
                               timeout=300)
        assert probe.returncode == 0, probe.stderr[-3000:]
        result = json.loads(probe.stdout.strip().splitlines()[-1])
        assert result["alive"] == 3
        assert result["cpus"] == 2.0  # head has num-cpus 0: only the two 1-CPU workers hold tasks
        assert len(set(result["nodes"].values())) == 2  # each task ran on its own node
        # Joining without token auth is refused (and our warning helper flags it).
        no_auth = subprocess.run([sys.executable, "-c", _PROBE], env={**probe_env, "RAY_AUTH_MODE": "disabled"},
                                 capture_output=True, text=True, timeout=300)
        assert no_auth.returncode != 0
        assert check_auth_for_cluster("127.0.0.1:6393", env={"RAY_AUTH_MODE": "disabled"}, home=tmp_path)
    finally:
        stopped = subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, text=True,
                                 timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    status = subprocess.run(["bash", str(script), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "not running" in status.stdout  # no process of ours is left
