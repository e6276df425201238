"""The Kubernetes manifests (deploy/k8s), checked offline since no cluster runs here: every overlay renders with
`kubectl kustomize`, every object validates against the Kubernetes OpenAPI schemas (kubernetes-validate, strict),
the security rules hold for every pod, the network policies let each party reach only what it must, and the
ports, settings and mounts agree with the services' settings models read from the same env files."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from services.aggregator.config import AggregatorSettings
from services.hospital_node.config import HospitalNodeSettings
from services.key_authority.config import KeyAuthoritySettings

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
OVERLAYS = ("consortium", "hospital", "hospital-gpu")
KUBERNETES = "1.32.0"
SERVICES: dict[str, tuple[type[BaseSettings], str]] = {
    "key-authority": (KeyAuthoritySettings, "FEDXRAY_KA_"), "aggregator": (AggregatorSettings, "FEDXRAY_AGG_"),
    "hospital-node": (HospitalNodeSettings, "FEDXRAY_NODE_")}
SECRET_MODE = 0o440  # the pod's group (fsGroup) reads it; 0400 would leave it root's alone


def render(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(["kubectl", "kustomize", "--load-restrictor=LoadRestrictionsNone",
                             str(REPO / "deploy" / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def _of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def test_every_object_validates_against_the_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "ConfigMap", "NetworkPolicy"}, overlay
        for doc in docs:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    broken = copy.deepcopy(_of(rendered["consortium"], "StatefulSet")[0])
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}  # a typo the schema must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def security_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Each pod's departures from the rules: non-root, read-only root filesystem, no capabilities, no privilege
    escalation, seccomp RuntimeDefault, requests and limits, probes, secrets read-only at 0440, one replica."""
    found = []
    for workload in _of(docs, "StatefulSet") + _of(docs, "Deployment"):
        name, pod = workload["metadata"]["name"], workload["spec"]["template"]["spec"]
        security = pod.get("securityContext", {})
        if workload["spec"].get("replicas") != 1:
            found.append(f"{name}: replicas must be 1")
        if not security.get("runAsNonRoot") or security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            found.append(f"{name}: pod must run as non-root with seccomp RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            found.append(f"{name}: mounts a service account token")
        secrets = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
        for volume in pod.get("volumes", []):
            if "secret" in volume and volume["secret"].get("defaultMode") != SECRET_MODE:
                found.append(f"{name}: secret volume {volume['name']} mode {volume['secret'].get('defaultMode')}")
        for container in pod["containers"]:
            context = container.get("securityContext", {})
            if not context.get("readOnlyRootFilesystem") or context.get("allowPrivilegeEscalation") is not False \
                    or context.get("capabilities", {}).get("drop") != ["ALL"]:
                found.append(f"{name}/{container['name']}: container security context")
            resources = container.get("resources", {})
            if not resources.get("requests") or not resources.get("limits"):
                found.append(f"{name}/{container['name']}: requests and limits")
            if "livenessProbe" not in container or "readinessProbe" not in container:
                found.append(f"{name}/{container['name']}: probes")
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secrets and not mount.get("readOnly"):
                    found.append(f"{name}/{container['name']}: secret {mount['name']} mounted writable")
    return found


def test_every_pod_follows_the_security_rules(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        assert security_problems(docs) == [], overlay
    loose = copy.deepcopy(rendered["hospital"])
    pod = _of(loose, "StatefulSet")[0]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["volumes"][1]["secret"]["defaultMode"] = 0o644
    assert len(security_problems(loose)) == 2  # the check can fail


def test_the_key_authoritys_state_is_mounted_by_it_alone(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Its volume holds the CKKS secret key: a claim template of its StatefulSet, named by no other pod."""
    docs = rendered["consortium"]
    [authority] = [s for s in _of(docs, "StatefulSet") if s["metadata"]["name"] == "key-authority"]
    assert [t["metadata"]["name"] for t in authority["spec"]["volumeClaimTemplates"]] == ["state"]
    for workload in _of(docs, "StatefulSet"):
        claims = {v.get("persistentVolumeClaim", {}).get("claimName") for v in workload["spec"]["template"]["spec"].get(
            "volumes", [])}
        assert "state-key-authority-0" not in claims, workload["metadata"]["name"]
    # Never two at once: one replica, and a rolling update that replaces the pod (the StatefulSet's).
    assert authority["spec"]["replicas"] == 1 and authority["spec"]["podManagementPolicy"] == "OrderedReady"


def _ingress(docs: list[dict[str, Any]], app: str) -> list[dict[str, Any]]:
    """Every ingress rule that applies to the pods labelled `app` (an empty selector applies to all)."""
    rules = []
    for policy in _of(docs, "NetworkPolicy"):
        labels = policy["spec"]["podSelector"].get("matchLabels", {})
        if labels.get("app.kubernetes.io/name", app) == app:
            rules += policy["spec"].get("ingress", [])
    return rules


def test_network_policies_deny_by_default_and_open_only_each_partys_port(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        [deny] = [p for p in _of(docs, "NetworkPolicy") if p["metadata"]["name"] == "default-deny"]
        assert deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    consortium = rendered["consortium"]
    opened = {app: sorted((str(port["port"]), _sources(rule)) for rule in _ingress(consortium, app)
                          for port in rule.get("ports", []))
              for app in ("key-authority", "aggregator")}
    monitoring = "namespace:monitoring"
    assert opened["key-authority"] == sorted([("50051", "pod:aggregator,namespace-role:hospital,ip:192.0.2.0/24"),
                                              ("metrics", monitoring)])
    assert opened["aggregator"] == sorted([("50052", "namespace-role:hospital,ip:192.0.2.0/24"),
                                           ("metrics", monitoring)])
    assert sorted((str(p["port"]), _sources(rule)) for rule in _ingress(rendered["hospital"], "hospital-node")
                  for p in rule["ports"]) == [("metrics", monitoring)]


def _sources(rule: dict[str, Any]) -> str:
    names = []
    for peer in rule.get("from", []):
        if "podSelector" in peer and "namespaceSelector" not in peer:
            names.append(f"pod:{peer['podSelector']['matchLabels']['app.kubernetes.io/name']}")
        elif "namespaceSelector" in peer:
            labels = peer["namespaceSelector"]["matchLabels"]
            names.append(f"namespace:{labels['kubernetes.io/metadata.name']}" if "kubernetes.io/metadata.name"
                         in labels else f"namespace-role:{labels['fedxray.org/role']}")
        else:
            names.append(f"ip:{peer['ipBlock']['cidr']}")
    return ",".join(names) or "anyone"


def agreement_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Where a service's manifest disagrees with its settings, read as the service reads them (its env file from
    the ConfigMap, then the container's environment): ports, the env file itself, and the mounts its paths need."""
    found = []
    maps = {m["metadata"]["name"]: m for m in _of(docs, "ConfigMap")}
    for workload in _of(docs, "StatefulSet"):
        name = workload["metadata"]["name"]
        model, prefix = SERVICES[name]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        [env_map] = [m for key, m in maps.items() if key.startswith(f"{name}-env")]
        text = env_map["data"][f"{name}.env"]
        if text != (REPO / "deploy" / "env" / f"{name}.env").read_text():
            found.append(f"{name}: its ConfigMap is not deploy/env/{name}.env")
        values = {k.removeprefix(prefix).lower(): v for k, _, v in (line.partition("=") for line in text.splitlines()
                                                                     if line and not line.startswith("#"))}
        for variable in container.get("env", []):
            if variable["name"].startswith(prefix):
                values[variable["name"].removeprefix(prefix).lower()] = variable["value"]
        settings = model(**values)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        listen = getattr(settings, "listen", None)
        if listen is not None and ports.get("grpc") != int(listen.rpartition(":")[2]):
            found.append(f"{name}: grpc port {ports.get('grpc')} but the service listens on {listen}")
        if ports.get("metrics") != settings.metrics_port:  # type: ignore[attr-defined]
            found.append(f"{name}: metrics port {ports.get('metrics')} but metrics_port {settings.metrics_port}")  # type: ignore[attr-defined]
        mounts = [Path(m["mountPath"]) for m in container["volumeMounts"]]
        needed = [settings.tls_cert, settings.tls_key, settings.tls_ca, settings.state_dir]  # type: ignore[attr-defined]
        needed += [getattr(settings, field) for field in ("node_keys_dir", "peer_keys_dir", "identity_key", "data_path")
                   if getattr(settings, field, None) is not None]
        for path in needed:
            if not any(Path(path) == mount or Path(path).is_relative_to(mount) for mount in mounts):
                found.append(f"{name}: {path} is on no mounted volume")
    return found


def test_ports_settings_and_mounts_agree_with_the_settings_models(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        assert agreement_problems(docs) == [], overlay
    drifted = copy.deepcopy(rendered["consortium"])
    container = _of(drifted, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["containerPort"] += 1
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "state"]
    assert len(agreement_problems(drifted)) == 2  # the check can fail


def test_the_gpu_overlay_asks_for_one_gpu_and_only_it(rendered: dict[str, list[dict[str, Any]]]) -> None:
    def gpus(overlay: str) -> object:
        container = _of(rendered[overlay], "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
        return container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus("hospital-gpu"), gpus("hospital")) == (1, None)


def test_the_monitoring_overlay_carries_the_grafana_dashboard_as_it_is() -> None:
    [dashboard] = render("monitoring")
    kubernetes_validate.validate(dashboard, KUBERNETES, strict=True)
    assert dashboard["kind"] == "ConfigMap" and dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = REPO / "deploy" / "grafana" / "dashboards" / "fedxray.json"
    assert dashboard["data"]["fedxray.json"] == source.read_text()


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    matches = all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        matches &= (value in expression["values"]) if operator == "In" else (value not in expression["values"])
    return matches


def scrape_problems(monitor: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Where the ServiceMonitor misses a FedXray service: it selects every service's Service in any namespace, and
    its endpoint names a Service port that reaches the container's metrics port."""
    found = []
    if monitor["spec"].get("namespaceSelector") != {"any": True}:
        found.append("the ServiceMonitor must look in every namespace (the hospitals' are their own)")
    [endpoint] = monitor["spec"]["endpoints"]
    workloads = {w["metadata"]["name"]: w for w in _of(docs, "StatefulSet")}
    for service in _of(docs, "Service"):
        name = service["metadata"]["name"]
        if not _selects(monitor["spec"]["selector"], service["metadata"].get("labels", {})):
            found.append(f"{name}: not selected")
            continue
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        if endpoint["port"] not in ports:
            found.append(f"{name}: has no port named {endpoint['port']}")
            continue
        container = workloads[name]["spec"]["template"]["spec"]["containers"][0]
        if ports[endpoint["port"]]["targetPort"] != "metrics" or \
                "metrics" not in {p["name"] for p in container["ports"]}:
            found.append(f"{name}: port {endpoint['port']} does not reach the container's metrics port")
    return found


def test_the_operator_overlay_scrapes_every_service_and_carries_the_alert_rules_as_they_are(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """monitoring-operator: a ServiceMonitor for the Prometheus Operator, and deploy/prometheus/alerts.yml as a
    PrometheusRule. Its CRDs' schemas are not available offline, so the objects are checked here field by field."""
    docs = render("monitoring-operator")
    [monitor] = _of(docs, "ServiceMonitor")
    [rule] = _of(docs, "PrometheusRule")
    assert {d["apiVersion"] for d in docs} == {"monitoring.coreos.com/v1"} and len(docs) == 2
    assert all(d["metadata"]["namespace"] == "monitoring" for d in docs)
    for overlay in ("consortium", "hospital"):
        assert scrape_problems(monitor, rendered[overlay]) == [], overlay
    # The alert rules are alerts.yml's, generated (the committed file is what the script writes now)...
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    check = subprocess.run([sys.executable, str(REPO / "deploy" / "k8s" / "prometheus_rule.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    # ...and their job labels are the Services' names, which a ServiceMonitor without jobLabel gives its targets.
    services = {s["metadata"]["name"] for overlay in ("consortium", "hospital")
                for s in _of(rendered[overlay], "Service")}
    jobs = set()
    for group in alerts["groups"]:
        for alert in group["rules"]:
            for quoted in (part.split('"')[1] for part in alert["expr"].split("job=")[1:]):
                jobs |= set(quoted.split("|"))  # job="a" or job=~"a|b"
    assert jobs and jobs <= services, jobs - services
    assert "jobLabel" not in monitor["spec"]
    # The check can fail: a misspelled port, and a selector that leaves the hospitals out.
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["port"] = "metric"
    assert len(scrape_problems(broken, rendered["consortium"])) == 2
    broken = copy.deepcopy(monitor)
    broken["spec"]["selector"]["matchExpressions"][0]["values"].remove("hospital-node")
    assert scrape_problems(broken, rendered["hospital"]) == ["hospital-node: not selected"]
