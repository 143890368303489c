"""Vendor the openAPIV3Schema of KubeRay's RayJob and RayCluster CRDs, and turn it into a JSON Schema.

    python cluster/schema/vendor.py --kuberay-git /path/to/kuberay/.git [--release v1.7.0]

reads ``helm-chart/kuberay-operator/crds/ray.io_{rayjobs,rayclusters}.yaml`` at the release tag of a
clone of github.com/ray-project/kuberay, keeps only the ``v1`` version's ``openAPIV3Schema`` (without
its ``description`` texts, which are ~80 % of the bytes), and writes ``kuberay-<release>/*.json`` plus
``kuberay-<release>/source.json`` (tag, commit, path and sha256 of each CRD file it read).

``json_schema()`` converts such an openAPI schema into what the API server enforces on apply, for
``jsonschema.Draft4Validator`` (openAPI 3.0 schemas are Draft 4 with extensions): ``additionalProperties:
false`` wherever properties are listed and ``x-kubernetes-preserve-unknown-fields`` is not set (the API
server prunes or, with ``kubectl apply --validate=strict``, rejects unknown fields), ``nullable`` as a
``null`` type. Not checked: ``x-kubernetes-validations`` (CEL rules), list-map key uniqueness.
Pure Python + PyYAML.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RELEASE = "v1.7.0"  # the KubeRay release whose CRDs the manifests are checked against (README names it)
CRDS = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
CRD_DIR = "helm-chart/kuberay-operator/crds"
API_VERSION = "v1"


def schema_path(kind: str, release: str = RELEASE) -> Path:
    return HERE / f"kuberay-{release}" / f"{kind.lower()}.{API_VERSION}.openapi.json"


def _strip_descriptions(node):
    """Drop the ``description`` texts of schema nodes (never a property that is called description)."""
    if isinstance(node, list):
        return [_strip_descriptions(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description" and isinstance(value, str):
            continue
        if key == "properties":  # a map of property name -> schema: keep every name
            out[key] = {name: _strip_descriptions(sub) for name, sub in value.items()}
        else:
            out[key] = _strip_descriptions(value)
    return out


def openapi_schema(crd: dict, version: str = API_VERSION) -> dict:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version}")


_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def json_schema(node: dict) -> dict:
    """openAPI v3 (Kubernetes structural schema) -> JSON Schema Draft 4 that rejects unknown fields."""
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if "properties" in node:
        out["properties"] = {name: json_schema(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = json_schema(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        out["items"] = json_schema(node["items"])
    for key in _SCHEMA_LISTS:
        if key in node:
            out[key] = [json_schema(sub) for sub in node[key]]
    if "not" in node:
        out["not"] = json_schema(node["not"])
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        # An embedded object always may carry apiVersion/kind/metadata, listed or not.
        out.setdefault("properties", {})
        for name in ("apiVersion", "kind"):
            out["properties"].setdefault(name, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    return out


def load(kind: str, release: str = RELEASE) -> dict:
    """The vendored openAPI schema of ``kind`` ("RayJob" / "RayCluster") as a JSON Schema."""
    return json_schema(json.loads(schema_path(kind, release).read_text()))


def _git_show(git_dir: str, rev: str) -> bytes:
    return subprocess.run(["git", "--git-dir", git_dir, "show", rev], check=True, capture_output=True).stdout


def vendor(git_dir: str, release: str) -> None:
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", f"{release}^{{commit}}"], check=True,
                            capture_output=True, text=True).stdout.strip()
    source = {"repository": "https://github.com/ray-project/kuberay", "release": release, "commit": commit,
              "api_version": API_VERSION,
              "kept": "spec.versions[v1].schema.openAPIV3Schema, descriptions dropped",
              "files": {}}
    for kind, name in CRDS.items():
        raw = _git_show(git_dir, f"{commit}:{CRD_DIR}/{name}")
        crd = yaml.safe_load(raw)
        assert crd["spec"]["names"]["kind"] == kind, (name, crd["spec"]["names"]["kind"])
        out = schema_path(kind, release)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_strip_descriptions(openapi_schema(crd)), indent=1, sort_keys=True) + "\n")
        source["files"][out.name] = {"from": f"{CRD_DIR}/{name}", "sha256": hashlib.sha256(raw).hexdigest()}
        print(f"wrote {out} ({out.stat().st_size} bytes)")
    (HERE / f"kuberay-{release}" / "source.json").write_text(json.dumps(source, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kuberay-git", required=True,
                        help="git dir of a ray-project/kuberay clone (with tags)")
    parser.add_argument("--release", default=RELEASE)
    args = parser.parse_args(argv)
    try:
        vendor(args.kuberay_git, args.release)
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.decode(errors="replace").strip()
        print(f"{args.kuberay_git}: git failed: {reason}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
