"""KubeRay manifests in cluster/: schema, security, resume, and worker/GPU arithmetic against the job config.

Why: the KubeRay samples drifted from their code (worker counts that did not fit the worker groups,
kuberay#2329; a CPU request that no worker could hold, GKE samples PR #1543). Each RayJob entrypoint is
parsed by the job's own ``get_args_parser()`` and resolved into a ``GroundingConfig``, and the numbers
that config asks Ray for must fit the worker groups of the same manifest.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from grounding.distributed.cluster_checks import check_storage_path
from grounding.config import PROFILES_DIR

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
MANIFESTS = sorted(CLUSTER.glob("*.yaml"))
EXPECTED_JOBS = {"prepare", "train-detector", "extract-rois", "train", "tune", "evaluate", "severity-cv", "pipeline",
                 "pipeline-real"}
STORAGE = "/mnt/cluster_storage"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


render = _load("cluster_render", CLUSTER / "render.py")
crd_schema = _load("cluster_crd_schema", CLUSTER / "schema" / "vendor.py")
# The real KubeRay CRDs (cluster/schema/kuberay-<release>/, vendored by cluster/schema/vendor.py), with
# unknown fields rejected wherever the CRD lists properties.
VALIDATORS = {kind: jsonschema.Draft4Validator(crd_schema.load(kind)) for kind in crd_schema.CRDS}


def _docs():
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


DOCS = list(_docs())
RAYJOBS = [(name, doc) for name, doc in DOCS if doc.get("kind") == "RayJob"]
RAY_RESOURCES = [(name, doc) for name, doc in DOCS if doc.get("kind") in ("RayJob", "RayCluster")]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _ray_pods(doc: dict):
    """(role, pod template) for the head and every worker group."""
    spec = _cluster_spec(doc)
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def _all_containers(doc: dict):
    for role, pod in _ray_pods(doc):
        for container in pod["spec"]["containers"]:
            yield role, container
    if doc["kind"] == "RayJob":
        for container in doc["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            yield "submitter", container


def _quantity(value) -> float:
    """K8s CPU/GPU quantity -> float ("500m" -> 0.5)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _placeable_workers(doc: dict, cpus_per_worker: float, use_gpu: bool, gpus_per_worker: float = 1.0) -> int:
    """How many Ray Train workers of this shape the manifest's worker groups can hold at once.

    A worker needs ``cpus_per_worker`` CPUs (+ ``gpus_per_worker`` GPUs with use_gpu) on ONE pod; the head
    has num-cpus 0 and holds none.
    """
    total = 0
    for group in _cluster_spec(doc).get("workerGroupSpecs", []):
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        per_pod = int(_quantity(limits.get("cpu", 0)) // cpus_per_worker)
        if use_gpu:
            per_pod = min(per_pod, int(_quantity(limits.get("nvidia.com/gpu", 0)) // gpus_per_worker))
        total += group["replicas"] * per_pod
    return total


def _total_gpus(doc: dict) -> int:
    return sum(g["replicas"] * int(_quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                                             .get("nvidia.com/gpu", 0)))
               for g in _cluster_spec(doc).get("workerGroupSpecs", []))


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _sets(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")


# -- structure ---------------------------------------------------------------------------------------
def test_one_rayjob_per_job_and_names_match_files():
    assert {doc["metadata"]["name"].removeprefix("grounding-") for _, doc in RAYJOBS} == EXPECTED_JOBS
    for name, doc in RAYJOBS:
        assert name == f"rayjob-{doc['metadata']['name'].removeprefix('grounding-')}.yaml"
    assert any(doc["kind"] == "RayCluster" for _, doc in DOCS), "cluster/raycluster.yaml is missing"


def test_committed_manifests_match_the_renderer():
    rendered = render.render_all()
    committed = {p.name for p in MANIFESTS}
    assert set(rendered) == committed, "a cluster/*.yaml is not generated by cluster/render.py (or missing)"
    stale = [name for name, text in rendered.items() if (CLUSTER / name).read_text() != text]
    assert not stale, f"stale manifests {stale}: run `python cluster/render.py`"


def test_vendored_crds_match_their_source_record():
    source = json.loads((crd_schema.schema_path("RayJob").parent / "source.json").read_text())
    assert source["release"] == crd_schema.RELEASE and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert set(source["files"]) == {crd_schema.schema_path(kind).name for kind in crd_schema.CRDS}


@pytest.mark.parametrize("name, doc", RAY_RESOURCES, ids=[n for n, _ in RAY_RESOURCES])
def test_manifest_matches_the_kuberay_crd(name, doc):
    errors = list(VALIDATORS[doc["kind"]].iter_errors(doc))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def _head(d):
    return d["spec"]["rayClusterSpec"]["headGroupSpec"]


def _worker_group(d):
    return d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


# What the CRD itself rejects. Not in the v1.7.0 CRD (so the project's own tests below pin them):
# an enum for submissionMode, a minimum for replicas.
@pytest.mark.parametrize(
    "mutate",
    [lambda d: d["spec"].update(entrypointt=d["spec"]["entrypoint"]),  # misspelt field
     lambda d: d["spec"].update(shutdownAfterJobFinish=True),
     lambda d: _worker_group(d).update(rayStartParam={}),
     lambda d: _head(d)["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"),
     lambda d: _head(d)["template"]["metadata"].update(lables={}),
     lambda d: d["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"][1]["valueFrom"]
     .update(secretRef={"name": "x"}),
     lambda d: d["spec"].update(backoffLimit="2"),
     lambda d: _head(d)["rayStartParams"].update({"num-cpus": 0}),
     lambda d: _head(d)["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="four")],
    ids=["entrypointt", "shutdownAfterJobFinish", "rayStartParam", "container-field", "pod-metadata",
         "secret-ref", "type", "non-string-param", "quantity"],
)
def test_crd_rejects_broken_manifests(mutate):
    doc = render.rayjob(next(j for j in render.JOBS if j.name == "train"))
    assert not list(VALIDATORS["RayJob"].iter_errors(doc))
    mutate(doc)
    assert list(VALIDATORS["RayJob"].iter_errors(doc))


def test_crd_rejects_a_misspelt_raycluster_field():
    doc = render.raycluster()
    doc["spec"]["workerGroupSpecs"][0]["rayStartParam"] = {}
    assert list(VALIDATORS["RayCluster"].iter_errors(doc))


@pytest.mark.parametrize("name, doc", RAYJOBS, ids=[n for n, _ in RAYJOBS])
def test_rayjob_lifecycle_fields(name, doc):
    spec = doc["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1, "a retry (new cluster + resume by run id) needs backoffLimit >= 1"
    assert 0 < spec["activeDeadlineSeconds"] <= 7 * 24 * 3600
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    forbidden = {"pip", "uv", "conda", "working_dir", "py_modules"} & set(runtime_env)
    assert not forbidden, f"{name}: runtime installs/uploads {forbidden}; bake them into the image"
    assert doc["spec"]["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("name, doc", RAY_RESOURCES, ids=[n for n, _ in RAY_RESOURCES])
def test_worker_groups_have_a_fixed_positive_size(name, doc):
    # The CRD sets no minimum: a negative or zero group would only fail when the operator reconciles.
    for group in _cluster_spec(doc)["workerGroupSpecs"]:
        sizes = (group["minReplicas"], group["replicas"], group["maxReplicas"])
        assert 1 <= sizes[0] == sizes[1] == sizes[2], (name, group["groupName"], sizes)


@pytest.mark.parametrize("name, doc", RAY_RESOURCES, ids=[n for n, _ in RAY_RESOURCES])
def test_pods_head_gpu_groups_and_storage(name, doc):
    spec = _cluster_spec(doc)
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", "head must not run tasks"
    groups = spec.get("workerGroupSpecs", [])
    assert any("nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"]
               for g in groups), f"{name}: no CPU worker group for ingest"
    for role, pod in _ray_pods(doc):
        pod_spec = pod["spec"]
        assert pod_spec["terminationGracePeriodSeconds"] > 30, f"{name}/{role}"
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
        container = pod_spec["containers"][0]
        assert "ray stop" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"]), f"{name}/{role}"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get(STORAGE) in claims, f"{name}/{role}: {STORAGE} is not a PVC mount"
        res = container["resources"]
        assert res["requests"] == res["limits"], f"{name}/{role}: requests != limits"
        gpus = _quantity(res["limits"].get("nvidia.com/gpu", 0))
        tolerated = any(t["key"] == "nvidia.com/gpu" for t in pod_spec.get("tolerations", []))
        assert tolerated == (gpus > 0), f"{name}/{role}: GPU pods need the nvidia.com/gpu toleration (and only they)"
        if role == "head":
            assert gpus == 0


# -- security ----------------------------------------------------------------------------------------
_SECRETISH = re.compile(r"^(?=.*[0-9])(?=.*[a-zA-Z])[A-Za-z0-9_\-+/=]{32,}$")


def _walk_strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_strings(value)
    elif isinstance(node, str):
        yield node


@pytest.mark.parametrize("name, doc", RAY_RESOURCES, ids=[n for n, _ in RAY_RESOURCES])
def test_token_auth_on_every_container_from_a_secret(name, doc):
    auth = _cluster_spec(doc).get("authOptions")
    for role, container in _all_containers(doc):
        env = {e["name"]: e for e in container.get("env", [])}
        if auth:  # KubeRay >= 1.5.1 injects the token env itself
            assert auth.get("mode") == "token"
            continue
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{name}/{role}: RAY_AUTH_MODE != token"
        token = env.get("RAY_AUTH_TOKEN")
        assert token and "value" not in token, f"{name}/{role}: token must not be literal"
        assert "secretKeyRef" in token.get("valueFrom", {}), f"{name}/{role}: token must come from a Secret"


def test_no_literal_tokens_or_secrets_anywhere():
    for name, doc in DOCS:
        assert doc.get("kind") != "Secret", f"{name}: never commit a Secret; create it with kubectl"
        for text in _walk_strings(doc):
            assert not _SECRETISH.match(text), f"{name}: {text[:8]}... looks like a literal secret"
        for _, container in (_all_containers(doc) if doc.get("kind") in ("RayJob", "RayCluster") else []):
            for env in container.get("env", []):
                if re.search("TOKEN|SECRET|PASSWORD|KEY", env["name"]) and env["name"] != "RAY_AUTH_MODE":
                    assert "value" not in env, f"{name}: {env['name']} has a literal value"


def test_dashboard_is_not_exposed_outside_the_cluster():
    for name, doc in DOCS:
        kind = doc.get("kind")
        assert kind not in ("Ingress", "Route", "Gateway", "HTTPRoute"), f"{name}: no public ingress for Ray"
        if kind == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{name}: Service type"
        if kind in ("RayJob", "RayCluster"):
            head = _cluster_spec(doc)["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: head serviceType"
            assert not head.get("enableIngress", False), f"{name}: enableIngress"
            assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


def test_security_checks_bite():
    doc = render.rayjob(render.JOBS[0])
    worker = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["env"] = [{"name": "RAY_AUTH_MODE", "value": "token"},
                     {"name": "RAY_AUTH_TOKEN", "value": "0123456789abcdef0123456789abcdef"}]
    with pytest.raises(AssertionError, match="literal"):
        test_token_auth_on_every_container_from_a_secret("mutated", doc)
    doc = render.rayjob(render.JOBS[0])
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    DOCS.append(("mutated.yaml", doc))
    try:
        with pytest.raises(AssertionError, match="serviceType"):
            test_dashboard_is_not_exposed_outside_the_cluster()
    finally:
        DOCS.pop()


# -- resume and shared storage -----------------------------------------------------------------------
@pytest.mark.parametrize("name, doc", RAYJOBS, ids=[n for n, _ in RAYJOBS])
def test_fixed_run_id_and_shared_storage(name, doc):
    argv = shlex.split(doc["spec"]["entrypoint"])
    sets = _sets(argv)
    run_id = _flag(argv, "--run-id") or _flag(argv, "--name") or sets.get("run.run_id")
    assert run_id and re.fullmatch(r"[A-Za-z0-9._-]+", run_id), f"{name}: no fixed run id -> a retry cannot resume"
    storage = sets.get("run.storage_path")
    assert storage, f"{name}: run.storage_path not set"
    check_storage_path(storage, multi_node=True, env={})
    work_dir = _flag(argv, "--work-dir")
    assert work_dir and work_dir.startswith(STORAGE + "/"), f"{name}: --work-dir {work_dir} is not on shared storage"
    for flag in ("--out", "--prepared", "--rois", "--word-vectors", "--checkpoint", "--detector", "--root"):
        if (value := _flag(argv, flag)) is not None:
            check_storage_path(value, multi_node=True, env={})


# -- entrypoints against the real job parsers and config --------------------------------------------
def _job_config(doc: dict):
    """Parse the entrypoint with the job's own parser; resolve the GroundingConfig it would run with."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("rayjobs."), argv[:3]
    module_name = argv[2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            pytest.xfail(f"{module_name} does not exist yet (entrypoint of {doc['metadata']['name']})")
        raise
    assert callable(getattr(module, "main", None)), f"{module_name}.main missing"
    factory = getattr(module, "get_args_parser", None)
    assert factory is not None and factory.__module__ == module_name, (
        f"{module_name} must define its own get_args_parser() (house rule; launchers reuse it), "
        f"found {getattr(factory, '__module__', None)}.get_args_parser")
    try:
        parser = factory()
    except TypeError as err:  # e.g. a module-level rebinding that shadows rayjobs._cli.get_args_parser
        pytest.fail(f"{module_name}.get_args_parser() cannot build its parser: {err}")
    try:
        args = parser.parse_args(argv[3:])
    except SystemExit:
        pytest.fail(f"{module_name}.get_args_parser() rejects the entrypoint flags: {argv[3:]}")
    profile = getattr(args, "config", None)
    if profile and not Path(profile).exists() and not (PROFILES_DIR / f"{profile}.yaml").exists():
        pytest.xfail(f"config profile '{profile}' not written yet ({PROFILES_DIR / (profile + '.yaml')})")
    from rayjobs._cli import build_config

    return argv, build_config(args)


def _assert_fits(name, doc, section, what):
    workers = section.num_workers
    if workers == 0:  # Ray Train local mode: in-process
        return
    placeable = _placeable_workers(doc, section.cpus_per_worker, section.use_gpu)
    assert workers <= placeable, (
        f"{name}: {what}.num_workers={workers} x (cpus={section.cpus_per_worker}, gpu={int(section.use_gpu)}) "
        f"but the worker groups hold only {placeable}")


@pytest.mark.parametrize("name, doc", RAYJOBS, ids=[n for n, _ in RAYJOBS])
def test_entrypoint_parses_and_fits_the_worker_groups(name, doc):
    argv, cfg = _job_config(doc)
    job = argv[2].removeprefix("rayjobs.").replace("_", "-")  # the module: pipeline-real runs rayjobs.pipeline
    gpus = _total_gpus(doc)
    wants_gpu = False
    if job in ("train-detector", "pipeline"):
        _assert_fits(name, doc, cfg.detector, "detector")
        wants_gpu |= cfg.detector.use_gpu
    if job in ("train", "tune", "pipeline"):
        _assert_fits(name, doc, cfg.train, "train")
        wants_gpu |= cfg.train.use_gpu
    if job in ("extract-rois", "pipeline", "severity-cv") and cfg.detector.use_gpu:
        assert gpus >= max(1, cfg.detector.extract_actors), f"{name}: extract_actors > GPUs"
        wants_gpu = True
    assert wants_gpu == (gpus > 0), f"{name}: GPU groups ({gpus} GPUs) but use_gpu={wants_gpu}, or the reverse"
    assert cfg.run.storage_path.startswith(STORAGE)
    assert cfg.run.work_dir.startswith(STORAGE)
    if job == "tune":
        space = _flag(argv, "--space")
        local = ROOT / Path(space).relative_to(render.APP_DIR)
        if not local.exists():
            pytest.xfail(f"search space {local.relative_to(ROOT)} not written yet")


def test_fit_arithmetic_bites():
    """4 one-GPU workers do not fit 2 one-GPU pods; 10-CPU workers do not fit 8-CPU pods (GKE PR #1543)."""
    doc = {"kind": "RayCluster", "spec": render._cluster_spec("x", gpu_replicas=2, cpu_replicas=1)}
    assert _placeable_workers(doc, cpus_per_worker=4, use_gpu=True) == 2
    assert _placeable_workers(doc, cpus_per_worker=10, use_gpu=True) == 0
    assert _placeable_workers(doc, cpus_per_worker=2, use_gpu=False) == 3 * 4  # CPU-only workers go anywhere
    assert _total_gpus(doc) == 2
