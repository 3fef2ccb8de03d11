"""deploy/k8s: every manifest in the kustomization validates offline against Kubernetes' own OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), and the manifests say what this server needs: probes on the
routes it serves, `beem serve` listening on 0.0.0.0, non-root with a read-only root and model store, an HPA on a
metric the server really exports, a Service that selects the pods. No cluster needed; runs in seconds."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from service.cli import parser as beem_parser
from service.metrics import ServiceMetrics
from service.routes.operations import router as operations_router
from service.settings import ServerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
KSERVE_EXAMPLE = "kserve-inferenceservice.yaml"
# The alert rules as a Prometheus Operator PrometheusRule: optional like the KServe example (the operator's CRDs).
PROMETHEUS_RULE = "prometheus-rule.yaml"
ALERT_RULES = REPO_ROOT / "docker" / "prometheus" / "alerts.yml"
LISTED = sorted(yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"])
# Oldest Kubernetes the manifests target (the preStop `sleep` action is on by default from 1.30) and the newest
# schemas the pinned kubernetes-validate ships.
K8S_VERSIONS = ("1.30", "1.37")
QUEUE_METRIC = "beem_queue_depth"
# Kubernetes' Quantity grammar (resource.Quantity): a decimal number, then a binary or decimal suffix or an exponent.
QUANTITY = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?")
QUANTITY_KEYS = {"cpu", "memory", "ephemeral-storage", "sizeLimit", "averageValue"}
# InferenceService predictor fields that are KServe's own; everything else in a predictor is a core PodSpec.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
    "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy", "autoScaling",
}  # fmt: skip


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.skip(
            "schema validation of deploy/k8s needs the PyPI package kubernetes-validate: "
            ".venv/bin/pip install kubernetes-validate==1.37.0"
        )
    return kubernetes_validate


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S_DIR / name).read_text()) if doc]


def _resources() -> list[dict[str, Any]]:
    return [doc for name in LISTED for doc in _documents(name)]


def _one(kind: str) -> dict[str, Any]:
    found = [doc for doc in _resources() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in the kustomization, found {len(found)}"
    return found[0]


def _pod_spec() -> dict[str, Any]:
    return _one("Deployment")["spec"]["template"]["spec"]


def _server_container(pod_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    containers = (pod_spec or _pod_spec())["containers"]
    assert len(containers) == 1, "one container per pod: the server"
    return containers[0]


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    for declared in container["ports"]:
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container.get("env", [])}


def _served_paths() -> set[str]:
    return {getattr(route, "path", "") for route in operations_router.routes}


# --- the kustomization and schema validation ------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_optional_ones() -> None:
    optional = {KSERVE_EXAMPLE, PROMETHEUS_RULE}
    on_disk = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml", *optional}
    assert sorted(on_disk) == LISTED, "a manifest in deploy/k8s that `kubectl apply -k` would not apply"
    assert not optional & set(LISTED), "the KServe example and the PrometheusRule need CRDs: they stay optional"
    assert {doc["kind"] for doc in _resources()} == {
        "Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
    }  # fmt: skip


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", LISTED)
def test_manifest_validates_against_kubernetes_schema(name: str, version: str) -> None:
    validator = _kubernetes_validate()
    problems = []
    for doc in _documents(name):
        resource = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            validator.validate(doc, version, strict=True)
        except validator.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            problems.append(f"{resource} invalid for Kubernetes {version} at {where}: {error.message}")
        except validator.SchemaNotFoundError as error:
            problems.append(f"{resource}: no core schema to validate against: {error.message}")
    assert not problems, f"{name}: " + "; ".join(problems)


def _quantities(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        found = [(f"{path}.{key}", value) for key, value in node.items() if key in QUANTITY_KEYS]
        return found + [item for key, value in node.items() for item in _quantities(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [item for index, value in enumerate(node) for item in _quantities(value, f"{path}[{index}]")]
    return []


@pytest.mark.parametrize("name", [*LISTED, KSERVE_EXAMPLE])
def test_quantities_are_kubernetes_quantities(name: str) -> None:
    """The schemas leave a Quantity a free string: `memory: 1GB` validates there and is refused by the API server."""
    bad = [(path, value) for doc in _documents(name) for path, value in _quantities(doc)
           if not (isinstance(value, (int, float)) or QUANTITY.fullmatch(str(value)))]  # fmt: skip
    assert not bad, f"{name}: not Kubernetes quantities: {bad}"


def _kserve_pod_spec() -> dict[str, Any]:
    (service,) = _documents(KSERVE_EXAMPLE)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    return {key: value for key, value in predictor.items() if key not in KSERVE_COMPONENT_FIELDS}


def test_kserve_predictor_pod_spec_validates() -> None:
    """KServe's CRD is not in the core schemas; the predictor's PodSpec part is, so it is validated as a Pod."""
    validator = _kubernetes_validate()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-predictor"}, "spec": _kserve_pod_spec()}
    for version in K8S_VERSIONS:
        validator.validate(pod, version, strict=True)


def test_kserve_example_runs_the_same_server() -> None:
    container = _server_container(_kserve_pod_spec())
    assert container["name"] == "kserve-container", "KServe finds the predictor's main container by this name"
    assert container["image"] == _server_container()["image"]
    assert container["command"] + container["args"] == _server_container()["command"] + _server_container()["args"]
    port = container["ports"][0]["containerPort"]
    # The Open Inference Protocol's health routes (service/routes/open_inference.py), as KServe's v2 expects.
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    env = _env(container)
    assert env["PROTOCOL"]["value"] == "v2", "a custom predictor declares KServe's v2 protocol with PROTOCOL"
    assert env["STORAGE_URI"]["value"].startswith("pvc://")
    assert env["BEEM_BUNDLE"]["value"].startswith("/mnt/models"), "KServe puts the STORAGE_URI's files there"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl: `kubectl kustomize` build not checked")
def test_kubectl_kustomize_builds() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc)
    assert kinds == sorted(doc["kind"] for doc in _resources())


# --- what this server needs -----------------------------------------------------------------------------------------


def test_everything_lives_in_the_namespace_it_creates() -> None:
    namespace = _one("Namespace")["metadata"]["name"]
    for doc in _resources():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"


def test_container_runs_beem_serve_on_all_interfaces() -> None:
    container = _server_container()
    command = container["command"] + container.get("args", [])
    assert command[:2] == ["beem", "serve"]
    arguments = beem_parser().parse_args(command[1:])  # the real CLI: the flags exist and parse
    assert arguments.host == "0.0.0.0"
    assert arguments.port == _container_port(container, "http") == 8000
    assert container["image"] == "beem-serve:latest"
    assert container["imagePullPolicy"] == "IfNotPresent", "`latest` would default to Always: no local images"


def test_probes_hit_healthz_and_readyz_on_the_container_port() -> None:
    container = _server_container()
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz"}
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert _container_port(container, probe["port"]) == 8000, probe_name
    assert set(expected.values()) <= _served_paths(), "a probe on a route the server does not serve"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "the startup probe must wait for the model"


def test_env_names_real_settings_with_valid_values() -> None:
    """The server ignores unknown BEEM_* variables, so a typo would silently change nothing: check every name."""
    env = _env(_server_container())
    settings = {name.removeprefix("BEEM_").lower(): item for name, item in env.items() if name.startswith("BEEM_")}
    unknown = set(settings) - set(ServerSettings.model_fields)
    assert not unknown, f"BEEM_* variables that are no setting: {sorted(unknown)}"
    assert "value" not in settings.get("api_key", {}), "the API key comes from a Secret, never a literal"
    bundle = PurePosixPath(settings["bundle"]["value"])
    literal = {name: item["value"] for name, item in settings.items() if "value" in item and name != "bundle"}
    ServerSettings(bundle=REPO_ROOT / "model_store" / bundle.name, **literal)  # raises on an invalid value


def test_runs_as_non_root_with_a_read_only_root_filesystem() -> None:
    pod_spec = _pod_spec()
    security = pod_spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    (tmp,) = [mount for mount in _server_container()["volumeMounts"] if mount["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]], "/tmp must be writable with a read-only root"
    assert pod_spec["enableServiceLinks"] is False, "service links could set BEEM_PORT=tcp://... in the namespace"


def test_model_store_is_mounted_read_only_and_holds_the_bundle() -> None:
    pod_spec = _pod_spec()
    container = _server_container()
    (mount,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    assert mount["name"] in {volume["name"] for volume in pod_spec["volumes"]}
    bundle = PurePosixPath(_env(container)["BEEM_BUNDLE"]["value"])
    assert bundle.parent == PurePosixPath("/models")
    assert (REPO_ROOT / "model_store" / bundle.name).is_dir(), "the image bakes model_store/; no such bundle there"
    # The init container seeds the volume with exactly that bundle from the image (same image, same store).
    (seed,) = pod_spec["initContainers"]
    assert seed["image"] == container["image"]
    (seed_mount,) = seed["volumeMounts"]
    assert seed_mount["name"] == mount["name"] and not seed_mount.get("readOnly", False)
    assert seed["command"][-2:] == [str(bundle), seed_mount["mountPath"] + "/"]


def test_service_selects_the_deployment_pods_on_the_server_port() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert _container_port(_server_container(), port["targetPort"]) == 8000
    budget = _one("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_prometheus_scrapes_the_metrics_route() -> None:
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == _container_port(_server_container(), "http")
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "/metrics" in _served_paths()


def test_hpa_scales_the_deployment_on_queue_depth_and_cpu() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    deployment = _one("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}  # fmt: skip
    assert hpa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; re-applying must not reset it"
    by_type = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] == QUEUE_METRIC
    assert pods["target"]["type"] == "AverageValue"
    assert float(pods["target"]["averageValue"]) > 0
    cpu = by_type["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert "cpu" in _server_container()["resources"]["requests"], "CPU utilisation is relative to the request"


def test_queue_depth_metric_is_one_the_server_exports() -> None:
    exposition = ServiceMetrics(6).render().decode()
    assert f"# TYPE {QUEUE_METRIC} gauge" in exposition
    assert re.search(rf"^{QUEUE_METRIC} ", exposition, re.MULTILINE), "unlabelled: one series per pod"


def test_prometheus_adapter_rule_exposes_queue_depth_per_pod() -> None:
    config = yaml.safe_load(_one("ConfigMap")["data"]["config.yaml"])
    (rule,) = [rule for rule in config["rules"] if QUEUE_METRIC in rule["seriesQuery"]]
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert re.fullmatch(rule["name"]["matches"], QUEUE_METRIC)
    assert rule["name"].get("as", QUEUE_METRIC) == QUEUE_METRIC, "the name the HPA asks the custom metrics API for"
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]


def test_prometheus_rule_carries_the_compose_alert_rules() -> None:
    """The same groups as docker/prometheus/alerts.yml (which promtool checks and unit-tests), in the namespace."""
    (rule,) = _documents(PROMETHEUS_RULE)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["namespace"] == _one("Namespace")["metadata"]["name"]
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"], "edit both together"
