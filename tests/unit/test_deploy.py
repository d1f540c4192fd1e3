"""deploy/base, checked offline: rendered as `kustomize build` would, validated
against the Kubernetes OpenAPI schemas, and held to what a platform team relies
on: gRPC probes on the served port, Services and engine targets that match,
GOVMESH_* variables that the services really read, no secret outside a Secret,
hardened pods, disruption budgets and network policies.

`manifest_problems()` returns every broken property of a rendering; the
mutation tests break one property at a time and require it to be named.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml

from govmesh.engine.config import EngineSettings
from govmesh.lineage.config import LineageSettings
from govmesh.policy.config import PolicySettings
from govmesh.runtime.server import LIVENESS_SERVICE
from govmesh.runtime.settings import ServerSettings, SettingsError, load_settings
from govmesh.verification.config import VerificationSettings

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "base"

Manifest = dict[str, Any]

#: The settings class of each service, as `govmesh serve NAME` builds it.
SETTINGS: dict[str, type[ServerSettings]] = {
    "engine": EngineSettings,
    "verification": VerificationSettings,
    "policy": PolicySettings,
    "lineage": LineageSettings,
}
#: The engine's setting naming each peer.
PEER_TARGETS = {
    "verification": "GOVMESH_VERIFICATION_TARGET",
    "policy": "GOVMESH_POLICY_TARGET",
    "lineage": "GOVMESH_LINEAGE_TARGET",
}
#: What `govmesh db upgrade` reads (services/govmesh/cli/db.py).
MIGRATION_ENV = {"GOVMESH_DATABASE_URL"}
#: The files of the govmesh-keys Secret each service may see: its own key only.
OWN_KEYS = {
    "engine": {"engine.jwk.json"},
    "lineage": {"lineage.jwk.json"},
    "policy": {"policy-admin.jwk.json"},
    "verification": set(),
}
#: Settings that hold credentials: only ever from a Secret.
SECRET_SETTINGS = {"GOVMESH_DATABASE_URL"}
#: The oldest Kubernetes the base supports (native gRPC probes, preStop sleep)
#: and the newest the installed schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
#: Stands in for a secretKeyRef when the settings are built from a pod's env.
SECRET_STAND_INS = {
    "url": "postgresql://govmesh:stand-in@db.invalid:5432/govmesh",
    "lineage-url": "postgresql://govmesh_lineage:stand-in@db.invalid:5432/govmesh",
}

# ---------------------------------------------------------------------------
# Rendering: the subset of kustomize that deploy/ uses.
# ---------------------------------------------------------------------------

_KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "images", "resources"}
_LABEL_FIELDS = {"pairs", "includeSelectors", "includeTemplates"}
_IMAGE_FIELDS = {"name", "newName", "newTag", "digest"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class UnsupportedKustomization(Exception):
    """A kustomization that uses more of kustomize than `render` implements."""


def render(directory: Path) -> list[Manifest]:
    """What `kustomize build DIR` prints, for the fields `render` knows.

    Any other field, a directory or remote resource, `includeSelectors` or an
    unknown workload kind is refused, so the base cannot grow a feature that
    this renderer would silently leave out.
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KUSTOMIZATION_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"kustomization fields not rendered: {sorted(unknown)}")
    resources: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if not path.is_file():
            raise UnsupportedKustomization(f"only files are rendered as resources: {entry}")
        resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for resource in resources:
        if "template" in resource.get("spec", {}) and resource["kind"] not in _POD_TEMPLATE_KINDS:
            raise UnsupportedKustomization(f"templates of {resource['kind']} are not rendered")

    namespace = kustomization.get("namespace")
    if namespace:
        for resource in resources:
            if resource["kind"] not in _CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace

    for entry in kustomization.get("labels", []):
        if set(entry) - _LABEL_FIELDS or entry.get("includeSelectors"):
            raise UnsupportedKustomization(f"labels entry not rendered: {entry}")
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(entry["pairs"])
            if entry.get("includeTemplates") and resource["kind"] in _POD_TEMPLATE_KINDS:
                template = resource["spec"]["template"].setdefault("metadata", {})
                template.setdefault("labels", {}).update(entry["pairs"])

    for image in kustomization.get("images", []):
        if set(image) - _IMAGE_FIELDS:
            raise UnsupportedKustomization(f"images entry not rendered: {image}")
        for container in _all_containers(resources):
            if _image_name(container["image"]) == image["name"]:
                name = image.get("newName", image["name"])
                if "digest" in image:
                    container["image"] = f"{name}@{image['digest']}"
                elif "newTag" in image:
                    container["image"] = f"{name}:{image['newTag']}"
                else:
                    tag = container["image"][len(_image_name(container["image"])) :]
                    container["image"] = name + tag
    return resources


def _image_name(image: str) -> str:
    """The repository of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    if ":" in last:
        last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def _all_containers(resources: list[Manifest]) -> Iterator[dict[str, Any]]:
    for resource in resources:
        if resource["kind"] in _POD_TEMPLATE_KINDS:
            spec = resource["spec"]["template"]["spec"]
            yield from spec.get("initContainers", [])
            yield from spec.get("containers", [])


# ---------------------------------------------------------------------------
# Schema validation.
# ---------------------------------------------------------------------------


def schema_errors(resources: list[Manifest]) -> list[str]:
    """Strict OpenAPI validation of every resource, for every supported version."""
    errors = []
    for resource in resources:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(part) for part in exc.path)
                errors.append(f"{_id(resource)} on {version}: {where}: {exc.message}")
    return errors


# ---------------------------------------------------------------------------
# The properties a platform team relies on.
# ---------------------------------------------------------------------------


def _id(resource: Manifest) -> str:
    return f"{resource['kind']} {resource['metadata'].get('name')}"


def _of_kind(resources: list[Manifest], kind: str) -> list[Manifest]:
    return [r for r in resources if r["kind"] == kind]


def _pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def _component(workload: Manifest) -> str:
    return _pod_labels(workload).get("app.kubernetes.io/component", "")


def _selects(match_labels: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (match_labels or {}).items())


def _deployments(resources: list[Manifest]) -> dict[str, Manifest]:
    return {_component(d): d for d in _of_kind(resources, "Deployment")}


def _container(workload: Manifest) -> dict[str, Any]:
    container: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def _grpc_port(container: dict[str, Any]) -> int | None:
    for port in container.get("ports", []):
        if port.get("name") == "grpc":
            number: int = port["containerPort"]
            return number
    return None


def _expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion against the variables defined before."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: defined.get(m[1], m[0]), value)


def _pod_env(workload: Manifest, container: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the process sees them; secrets by stand-ins."""
    namespace = workload["metadata"].get("namespace", "default")
    env: dict[str, str] = {}
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = _expand(var["value"], env)
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
        elif "secretKeyRef" in source:
            env[var["name"]] = SECRET_STAND_INS.get(source["secretKeyRef"]["key"], "stand-in")
    return env


def _mount_of(
    workload: Manifest, container: dict[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The volume mount holding `path`, and its volume."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            return mount, volumes.get(mount["name"], {})
    return None


def _service_for(resources: list[Manifest], workload: Manifest) -> Manifest | None:
    for service in _of_kind(resources, "Service"):
        if service["spec"].get("selector") and _selects(
            service["spec"]["selector"], _pod_labels(workload)
        ):
            return service
    return None


def _service_target_port(service: Manifest, container: dict[str, Any]) -> int | None:
    port = service["spec"]["ports"][0]
    target = port.get("targetPort", port["port"])
    if isinstance(target, str):
        named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == target]
        return named[0] if named else None
    number: int = target
    return number


def _settings_of(name: str, deployment: Manifest) -> ServerSettings:
    """The settings exactly as the pod builds them: from its env and nothing else."""
    with mock.patch.dict(os.environ, _pod_env(deployment, _container(deployment)), clear=True):
        return load_settings(SETTINGS[name])


def check_services(resources: list[Manifest]) -> Iterator[str]:
    """Each service runs `govmesh serve NAME`, probed over gRPC on the port it serves."""
    deployments = _deployments(resources)
    if set(deployments) != set(SETTINGS):
        yield f"Deployments for {sorted(deployments)}, expected {sorted(SETTINGS)}"
    for name, deployment in deployments.items():
        if name not in SETTINGS:
            continue
        if len(deployment["spec"]["template"]["spec"]["containers"]) != 1:
            yield f"{_id(deployment)} runs more than the {name} container"
        container = _container(deployment)
        if container.get("command") != ["govmesh", "serve", name]:
            yield f"{_id(deployment)} does not run `govmesh serve {name}`"
        port = _grpc_port(container)
        if port is None:
            yield f"{_id(deployment)} has no container port named grpc"
            continue
        default_port = str(SETTINGS[name].model_fields["listen"].default).rpartition(":")[2]
        if default_port and str(port) != default_port:
            yield f"{_id(deployment)} serves on {port}, the {name} default is {default_port}"
        listen = _pod_env(deployment, container).get("GOVMESH_LISTEN")
        if listen != f"0.0.0.0:{port}":
            yield f"{_id(deployment)} GOVMESH_LISTEN is {listen!r}, not 0.0.0.0:{port}"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            spec = container.get(probe)
            if spec is None and probe == "startupProbe":
                continue
            if spec is None or "grpc" not in spec:
                yield f"{_id(deployment)} {probe} is not a gRPC health probe"
            elif spec["grpc"].get("port") != port:
                yield f"{_id(deployment)} {probe} does not probe port {port}"
            elif probe == "readinessProbe" and spec["grpc"].get("service"):
                yield f"{_id(deployment)} readinessProbe does not check overall health"
            elif probe != "readinessProbe" and spec["grpc"].get("service") != LIVENESS_SERVICE:
                # Overall health may be NOT_SERVING for a live process (a policy
                # authority waiting for its first bundle); restarting it helps nobody.
                yield f"{_id(deployment)} {probe} does not ask {LIVENESS_SERVICE}"
        service = _service_for(resources, deployment)
        if service is None:
            yield f"no Service selects the {name} pods"
            continue
        if service["metadata"]["name"] != name:
            yield f"{_id(service)} serves {name}; the engine and clients call it {name!r}"
        published = service["spec"]["ports"][0]["port"]
        if published != port or _service_target_port(service, container) != port:
            yield f"{_id(service)} port {published} does not lead to {name}'s port {port}"
        if name != "engine" and service["spec"].get("clusterIP") != "None":
            yield f"{_id(service)} is not headless; round_robin would see one address"


def check_settings(resources: list[Manifest]) -> Iterator[str]:
    """Every GOVMESH_* variable is a real, valid setting, and every required one is set."""
    for name, deployment in _deployments(resources).items():
        if name not in SETTINGS:
            continue
        cls = SETTINGS[name]
        prefix = str(cls.model_config.get("env_prefix", ""))
        known = {prefix + field.upper() for field in cls.model_fields}
        container = _container(deployment)
        env = _pod_env(deployment, container)
        for var in container.get("env", []):
            if var["name"].startswith("GOVMESH_") and var["name"] not in known:
                yield f"{_id(deployment)} sets {var['name']}, not a setting of {name}"
            if set(var.get("valueFrom", {})) - {"secretKeyRef", "fieldRef"}:
                yield f"{_id(deployment)} {var['name']}: only values, Secrets and fieldRefs"
        if container.get("envFrom"):
            yield f"{_id(deployment)} uses envFrom; name every variable so drift is caught"
        try:
            settings = _settings_of(name, deployment)
        except SettingsError as exc:
            yield f"{_id(deployment)} settings do not load: {exc}"
            continue
        for field, value in settings.model_dump().items():
            variable = prefix + field.upper()
            if (
                isinstance(value, Path)
                and variable in env
                and not _mount_of(deployment, container, str(value))
            ):
                yield f"{_id(deployment)} {variable}={value} is on no volume"
    for job in _of_kind(resources, "Job"):
        for var in _container(job).get("env", []):
            if var["name"].startswith("GOVMESH_") and var["name"] not in MIGRATION_ENV:
                yield f"{_id(job)} sets {var['name']}, which `govmesh db upgrade` ignores"


def check_engine_targets(resources: list[Manifest]) -> Iterator[str]:
    """The engine names each peer's headless Service and port, by cluster DNS."""
    deployments = _deployments(resources)
    engine = deployments.get("engine")
    if engine is None:
        return
    env = _pod_env(engine, _container(engine))
    namespace = engine["metadata"].get("namespace", "default")
    for peer, setting in PEER_TARGETS.items():
        workload = deployments.get(peer)
        service = _service_for(resources, workload) if workload else None
        if workload is None or service is None:
            yield f"{setting}: no {peer} Deployment and Service to point at"
            continue
        want = (
            f"dns:///{service['metadata']['name']}.{service['metadata']['namespace']}"
            f".svc.cluster.local:{service['spec']['ports'][0]['port']}"
        )
        if env.get(setting) != want:
            yield f"{setting} is {env.get(setting)!r}, not {want!r}"
        if service["metadata"]["namespace"] != namespace:
            yield f"{_id(service)} is not in the engine's namespace"


_PRIVATE_MATERIAL = (
    re.compile(r'"d"\s*:'),  # the private member of a JWK
    re.compile(r"PRIVATE KEY"),  # PEM
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # a URL carrying a password
)


def _looks_secret(text: str) -> bool:
    return any(pattern.search(text) for pattern in _PRIVATE_MATERIAL)


def check_secrets(resources: list[Manifest]) -> Iterator[str]:
    """Credentials and keys come from Secrets the operator creates, never inline."""
    for config_map in _of_kind(resources, "ConfigMap"):
        for key, text in {**config_map.get("data", {}), **config_map.get("binaryData", {})}.items():
            if key.endswith(".jwk.json") or _looks_secret(str(text)):
                yield f"{_id(config_map)} holds secret material in {key!r}"
    for secret in _of_kind(resources, "Secret"):
        if secret.get("data") or secret.get("stringData"):
            yield f"{_id(secret)} carries values in the manifests; create it out of band"
    for workload in resources:
        if workload["kind"] not in _POD_TEMPLATE_KINDS:
            continue
        name = _component(workload)
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                if var["name"] in SECRET_SETTINGS and "secretKeyRef" not in var.get(
                    "valueFrom", {}
                ):
                    yield f"{_id(workload)} {var['name']} is not from a Secret"
                if _looks_secret(str(var.get("value", ""))):
                    yield f"{_id(workload)} {var['name']} carries a secret inline"
        keys_dir = _pod_env(workload, _container(workload)).get("GOVMESH_KEYS_DIR")
        if keys_dir is not None:
            found = _mount_of(workload, _container(workload), keys_dir)
            if found is None or "secret" not in found[1]:
                yield f"{_id(workload)} GOVMESH_KEYS_DIR is not a Secret volume"
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if volume.get("secret", {}).get("secretName") == "govmesh-keys":
                items = {item["key"] for item in volume["secret"].get("items", [])}
                if not items or not items <= OWN_KEYS.get(name, set()):
                    yield f"{_id(workload)} sees govmesh keys beyond its own: {sorted(items)}"


def check_migrations(resources: list[Manifest]) -> Iterator[str]:
    """A Job runs `govmesh db upgrade` as the owner of the services' database (policy's URL)."""
    jobs = [j for j in _of_kind(resources, "Job") if _container(j).get("command")]
    upgrades = [j for j in jobs if _container(j)["command"] == ["govmesh", "db", "upgrade"]]
    if not upgrades:
        yield "no Job runs `govmesh db upgrade`"
        return
    owner = _deployments(resources).get("policy")
    if owner is None:
        return

    def database(workload: Manifest) -> Any:
        for var in _container(workload).get("env", []):
            if var["name"] == "GOVMESH_DATABASE_URL":
                return var.get("valueFrom", {}).get("secretKeyRef")
        return None

    for job in upgrades:
        if database(job) is None or database(job) != database(owner):
            yield f"{_id(job)} does not migrate the services' database as its owner"


def check_hardening(resources: list[Manifest]) -> Iterator[str]:
    """Non-root, read-only, no capabilities, RuntimeDefault seccomp, bounded resources."""
    for workload in resources:
        if workload["kind"] not in _POD_TEMPLATE_KINDS:
            continue
        pod = workload["spec"]["template"]["spec"]
        context = pod.get("securityContext", {})
        if context.get("runAsNonRoot") is not True or not context.get("runAsUser"):
            yield f"{_id(workload)} pod may run as root (runAsNonRoot, runAsUser)"
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            yield f"{_id(workload)} pod has no RuntimeDefault seccompProfile"
        if pod.get("automountServiceAccountToken") is not False:
            yield f"{_id(workload)} mounts a service account token it never uses"
        if any(pod.get(host) for host in ("hostNetwork", "hostPID", "hostIPC")):
            yield f"{_id(workload)} shares a host namespace"
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{_id(workload)} container {container['name']}"
            sc = container.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                yield f"{where} readOnlyRootFilesystem is not true"
            if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
                yield f"{where} may escalate privileges"
            caps = sc.get("capabilities", {})
            if caps.get("drop") != ["ALL"] or caps.get("add"):
                yield f"{where} capabilities are not exactly drop ALL"
            resources_ = container.get("resources", {})
            for bound in ("requests", "limits"):
                if set(resources_.get(bound, {})) < {"cpu", "memory"}:
                    yield f"{where} resources.{bound} lacks cpu or memory"
            if _mount_of(workload, container, "/tmp") is None:
                yield f"{where} has no writable /tmp on its read-only root"
        spool = _pod_env(workload, _container(workload)).get("GOVMESH_SPOOL_DIR")
        if spool is not None:
            found = _mount_of(workload, _container(workload), spool)
            if found is None or found[0].get("readOnly") or set(found[1]) & {"secret", "configMap"}:
                yield f"{_id(workload)} GOVMESH_SPOOL_DIR is not on a writable volume"


def check_lifecycle(resources: list[Manifest]) -> Iterator[str]:
    """Graceful stops fit the termination grace; scaled services keep a PDB."""
    budgets = _of_kind(resources, "PodDisruptionBudget")
    for name, deployment in _deployments(resources).items():
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        try:
            grace = _settings_of(name, deployment).grace_period_s if name in SETTINGS else 0
        except SettingsError:
            grace = 0  # check_settings names the problem
        if name in SETTINGS:
            pre_stop = container.get("lifecycle", {}).get("preStop", {})
            delay = pre_stop.get("sleep", {}).get("seconds", 0)
            total = pod.get("terminationGracePeriodSeconds", 30)
            if total <= grace + delay:
                yield (
                    f"{_id(deployment)} terminationGracePeriodSeconds {total} does not cover "
                    f"preStop {delay} s + GOVMESH_GRACE_PERIOD_S {grace} s"
                )
        replicas = deployment["spec"].get("replicas", 1)
        if name == "lineage" and replicas != 1:
            yield f"{_id(deployment)} runs {replicas} replicas; lineage is the sequencer"
        if name != "lineage" and replicas < 2:
            yield f"{_id(deployment)} runs {replicas} replica; it scales out, run at least 2"
        covering = [
            b
            for b in budgets
            if _selects(b["spec"]["selector"].get("matchLabels"), _pod_labels(deployment))
        ]
        if replicas > 1 and not covering:
            yield f"{_id(deployment)} has {replicas} replicas and no PodDisruptionBudget"
    for budget in budgets:
        match = budget["spec"]["selector"].get("matchLabels")
        selected = [
            n for n, d in _deployments(resources).items() if _selects(match, _pod_labels(d))
        ]
        if len(selected) != 1:
            yield f"{_id(budget)} selects {selected}, not one service"


def _ingress_rules(
    resources: list[Manifest], labels: dict[str, str]
) -> list[dict[str, Any]] | None:
    """The ingress rules admitting traffic to pods with `labels`; None if not isolated."""
    rules: list[dict[str, Any]] = []
    isolated = False
    for policy in _of_kind(resources, "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        if _selects(spec["podSelector"].get("matchLabels"), labels):
            isolated = True
            rules.extend(spec.get("ingress", []))
    return rules if isolated else None


def _port_allowed(rules: list[dict[str, Any]], port: int) -> bool:
    return any(
        not rule.get("ports") or any(p.get("port") in (port, "grpc") for p in rule["ports"])
        for rule in rules
    )


def check_network(resources: list[Manifest]) -> Iterator[str]:
    """Clients reach the engine; only the engine reaches verification, policy, lineage."""
    deployments = _deployments(resources)
    engine = deployments.get("engine")
    if engine is None:
        return
    engine_labels = _pod_labels(engine)
    others = [_pod_labels(w) for w in resources if w["kind"] in _POD_TEMPLATE_KINDS]
    others.remove(engine_labels)
    engine_rules = _ingress_rules(resources, engine_labels)
    port = _grpc_port(_container(engine)) or 0
    if engine_rules is not None and not _port_allowed(engine_rules, port):
        yield f"no NetworkPolicy lets clients reach the engine on {port}"
    for peer in PEER_TARGETS:
        workload = deployments.get(peer)
        if workload is None:
            continue
        port = _grpc_port(_container(workload)) or 0
        rules = _ingress_rules(resources, _pod_labels(workload))
        if rules is None:
            yield f"no NetworkPolicy isolates {peer}: anything in the cluster reaches it"
            continue
        if not _port_allowed(rules, port):
            yield f"NetworkPolicy: the engine cannot reach {peer} on {port}"
        for rule in rules:
            if _metrics_only(rule, _metrics_port(_container(workload))):
                continue  # check_metrics judges who may scrape
            sources = rule.get("from", [])
            only_engine = sources and all(
                set(source) == {"podSelector"}
                and _selects(source["podSelector"].get("matchLabels"), engine_labels)
                and not any(_selects(source["podSelector"].get("matchLabels"), o) for o in others)
                and source["podSelector"].get("matchLabels")
                for source in sources
            )
            if not only_engine:
                yield f"NetworkPolicy lets more than the engine reach {peer}: {rule}"
            if any(p.get("port") not in (port, "grpc") for p in rule.get("ports", [{}])):
                yield f"NetworkPolicy opens more than port {port} of {peer}: {rule}"


def check_metadata(resources: list[Manifest]) -> Iterator[str]:
    """app.kubernetes.io labels, one namespace that exists, the project's own image."""
    namespaces = {r["metadata"]["name"] for r in _of_kind(resources, "Namespace")}
    version = importlib.metadata.version("govmesh")
    for resource in resources:
        labels = resource["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/part-of") != "govmesh" or not labels.get(
            "app.kubernetes.io/name"
        ):
            yield f"{_id(resource)} lacks app.kubernetes.io/name and part-of labels"
        if resource["kind"] != "Namespace" and resource["metadata"].get("namespace") not in (
            namespaces
        ):
            yield f"{_id(resource)} is not in a namespace the base creates"
        if resource["kind"] in _POD_TEMPLATE_KINDS:
            pod = _pod_labels(resource)
            if not (pod.get("app.kubernetes.io/component") and pod.get("app.kubernetes.io/name")):
                yield f"{_id(resource)} pods lack app.kubernetes.io name and component"
            for container in resource["spec"]["template"]["spec"]["containers"]:
                image = container["image"]
                if _image_name(image).rpartition("/")[2] != "govmesh" or not image.endswith(
                    f":{version}"
                ):
                    yield f"{_id(resource)} image {image} is not govmesh {version}"


def _metrics_port(container: dict[str, Any]) -> int | None:
    for port in container.get("ports", []):
        if port.get("name") == "metrics":
            number: int = port["containerPort"]
            return number
    return None


def _metrics_only(rule: dict[str, Any], metrics_port: int | None) -> bool:
    ports = rule.get("ports") or []
    return bool(ports) and all(p.get("port") in ("metrics", metrics_port) for p in ports)


def check_metrics(resources: list[Manifest]) -> Iterator[str]:
    """Each service serves metrics on a port named `metrics`, which its Service publishes.

    A NetworkPolicy may open that port (to Prometheus), and then nothing else:
    the gRPC port stays the engine's.
    """
    for name, deployment in _deployments(resources).items():
        container = _container(deployment)
        port = _metrics_port(container)
        if port is None:
            yield f"{_id(deployment)} has no container port named metrics"
            continue
        listen = _pod_env(deployment, container).get("GOVMESH_METRICS_LISTEN")
        if listen != f"0.0.0.0:{port}":
            yield f"{_id(deployment)} GOVMESH_METRICS_LISTEN is {listen!r}, not 0.0.0.0:{port}"
        service = _service_for(resources, deployment)
        if service is None:
            continue  # check_services names it
        published = [p for p in service["spec"]["ports"] if p.get("name") == "metrics"]
        if not published or published[0].get("targetPort") not in ("metrics", port):
            yield f"{_id(service)} publishes no port named metrics leading to {name}'s {port}"
        for rule in _ingress_rules(resources, _pod_labels(deployment)) or []:
            opens_metrics = any(p.get("port") in ("metrics", port) for p in rule.get("ports", []))
            if opens_metrics and not _metrics_only(rule, port) and name != "engine":
                yield f"NetworkPolicy opens the metrics port of {name} with other ports: {rule}"


CHECKS: tuple[Callable[[list[Manifest]], Iterator[str]], ...] = (
    check_services,
    check_settings,
    check_engine_targets,
    check_secrets,
    check_migrations,
    check_hardening,
    check_lifecycle,
    check_network,
    check_metrics,
    check_metadata,
)


def manifest_problems(resources: list[Manifest]) -> list[str]:
    """Every broken property of a rendering (schema errors are `schema_errors`)."""
    return [problem for check in CHECKS for problem in check(resources)]


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[Manifest]:
    return render(BASE)


@pytest.fixture
def manifests(rendered: list[Manifest]) -> list[Manifest]:
    """A private copy to mutate."""
    return copy.deepcopy(rendered)


def test_the_base_renders_the_whole_mesh(rendered: list[Manifest]) -> None:
    kinds = sorted({r["kind"] for r in rendered})
    assert kinds == [
        "Deployment",
        "Job",
        "Namespace",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
    ]
    assert sorted(_deployments(rendered)) == sorted(SETTINGS)


def test_the_base_validates_strictly_against_the_kubernetes_schemas(
    rendered: list[Manifest],
) -> None:
    assert schema_errors(rendered) == []


def test_the_base_has_every_property_a_platform_team_relies_on(
    rendered: list[Manifest],
) -> None:
    assert manifest_problems(rendered) == []


def _find(resources: list[Manifest], kind: str, name: str) -> Manifest:
    for resource in resources:
        if resource["kind"] == kind and resource["metadata"]["name"] == name:
            return resource
    raise LookupError(f"{kind} {name}")


def _env_var(resources: list[Manifest], deployment: str, name: str) -> dict[str, Any]:
    for var in _container(_find(resources, "Deployment", deployment))["env"]:
        if var["name"] == name:
            found: dict[str, Any] = var
            return found
    raise LookupError(name)


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """Set a dotted path (list indices as numbers) on a resource; None deletes it."""

    def apply(resource: Manifest) -> None:
        *parents, last = path.split(".")
        node: Any = resource
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        if value is None:
            del node[key]
        else:
            node[key] = value

    return apply


def _on(
    kind: str, name: str, change: Callable[[Manifest], None]
) -> Callable[[list[Manifest]], None]:
    return lambda resources: change(_find(resources, kind, name))


def _env(deployment: str, name: str, **var: Any) -> Callable[[list[Manifest]], None]:
    def apply(resources: list[Manifest]) -> None:
        entry = _env_var(resources, deployment, name)
        entry.clear()
        entry.update({"name": name, **var})

    return apply


def _remove(kind: str, *names: str) -> Callable[[list[Manifest]], None]:
    def apply(resources: list[Manifest]) -> None:
        for name in names:
            resources.remove(_find(resources, kind, name))

    return apply


def _add_env(deployment: str, name: str, value: str) -> Callable[[list[Manifest]], None]:
    def apply(resources: list[Manifest]) -> None:
        _container(_find(resources, "Deployment", deployment))["env"].append(
            {"name": name, "value": value}
        )

    return apply


def _drop_env(deployment: str, name: str) -> Callable[[list[Manifest]], None]:
    def apply(resources: list[Manifest]) -> None:
        container = _container(_find(resources, "Deployment", deployment))
        container["env"] = [v for v in container["env"] if v["name"] != name]

    return apply


CONTAINER = "spec.template.spec.containers.0"
POD = "spec.template.spec"
PRIVATE_JWK = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "d": "BBBB"})

MUTATIONS: list[tuple[str, Callable[[list[Manifest]], None], str]] = [
    (
        "metrics-off",
        _env("lineage", "GOVMESH_METRICS_LISTEN", value="127.0.0.1:9464"),
        "Deployment lineage GOVMESH_METRICS_LISTEN is '127.0.0.1:9464', not 0.0.0.0:9464",
    ),
    (
        "metrics-port-unnamed",
        _on("Deployment", "policy", _set(f"{CONTAINER}.ports.1.name", "prom")),
        "Deployment policy has no container port named metrics",
    ),
    (
        "metrics-not-published",
        _on("Service", "verification", _set("spec.ports.1.targetPort", "grpc")),
        "Service verification publishes no port named metrics",
    ),
    (
        "probe-port",
        _on("Deployment", "engine", _set(f"{CONTAINER}.readinessProbe.grpc.port", 50052)),
        "readinessProbe does not probe port 50051",
    ),
    (
        "readiness-not-overall",
        _on("Deployment", "policy", _set(f"{CONTAINER}.readinessProbe.grpc.service", "x")),
        "readinessProbe does not check overall health",
    ),
    (
        "liveness-on-readiness",
        _on("Deployment", "policy", _set(f"{CONTAINER}.livenessProbe.grpc", {"port": 50052})),
        "livenessProbe does not ask govmesh.liveness",
    ),
    (
        "liveness-not-grpc",
        _on(
            "Deployment",
            "verification",
            _set(f"{CONTAINER}.livenessProbe", {"tcpSocket": {"port": 50053}}),
        ),
        "livenessProbe is not a gRPC health probe",
    ),
    (
        "service-port",
        _on("Service", "policy", _set("spec.ports.0.targetPort", 50060)),
        "Service policy port 50052 does not lead to policy's port 50052",
    ),
    (
        "listen-port",
        _env("lineage", "GOVMESH_LISTEN", value="0.0.0.0:6000"),
        "GOVMESH_LISTEN is '0.0.0.0:6000', not 0.0.0.0:50054",
    ),
    (
        "listen-unset",
        _drop_env("engine", "GOVMESH_LISTEN"),
        "Deployment engine GOVMESH_LISTEN is None, not 0.0.0.0:50051",
    ),
    (
        "listen-loopback",
        _env("verification", "GOVMESH_LISTEN", value="127.0.0.1:50053"),
        "GOVMESH_LISTEN is '127.0.0.1:50053', not 0.0.0.0:50053",
    ),
    (
        "service-selects-nothing",
        _on(
            "Service",
            "engine",
            _set(
                "spec.selector",
                {"app.kubernetes.io/name": "govmesh", "app.kubernetes.io/component": "engines"},
            ),
        ),
        "no Service selects the engine pods",
    ),
    (
        "sidecar",
        lambda resources: _find(resources, "Deployment", "policy")["spec"]["template"]["spec"][
            "containers"
        ].append({"name": "debug", "image": "busybox"}),
        "Deployment policy runs more than the policy container",
    ),
    (
        "container-port",
        _on("Deployment", "policy", _set(f"{CONTAINER}.ports.0.containerPort", 9000)),
        "serves on 9000, the policy default is 50052",
    ),
    (
        "unknown-setting",
        _add_env("engine", "GOVMESH_VERIFICATON_TARGET", "dns:///x:1"),
        "sets GOVMESH_VERIFICATON_TARGET, not a setting of engine",
    ),
    (
        "setting-of-another-service",
        _add_env("verification", "GOVMESH_POLICY_PATH", "/etc/govmesh/policies"),
        "sets GOVMESH_POLICY_PATH, not a setting of verification",
    ),
    (
        "required-setting-missing",
        _drop_env("engine", "GOVMESH_KEYS_DIR"),
        "GOVMESH_KEYS_DIR: Field required",
    ),
    (
        "invalid-setting",
        _env("policy", "GOVMESH_GRACE_PERIOD_S", value="soon"),
        "GOVMESH_GRACE_PERIOD_S: Input should be a valid number",
    ),
    (
        "setting-path-on-no-volume",
        _env("verification", "GOVMESH_TRUST_FILE", value="/srv/trust.toml"),
        "GOVMESH_TRUST_FILE=/srv/trust.toml is on no volume",
    ),
    (
        "envfrom",
        _on(
            "Deployment",
            "engine",
            _set(f"{CONTAINER}.envFrom", [{"configMapRef": {"name": "more"}}]),
        ),
        "uses envFrom",
    ),
    (
        "target-wrong-service",
        _env(
            "engine",
            "GOVMESH_VERIFICATION_TARGET",
            value="dns:///verifier.$(POD_NAMESPACE).svc.cluster.local:50053",
        ),
        "GOVMESH_VERIFICATION_TARGET is 'dns:///verifier.govmesh.svc.cluster.local:50053'",
    ),
    (
        "target-wrong-port",
        _env(
            "engine",
            "GOVMESH_LINEAGE_TARGET",
            value="dns:///lineage.$(POD_NAMESPACE).svc.cluster.local:50053",
        ),
        "GOVMESH_LINEAGE_TARGET is 'dns:///lineage.govmesh.svc.cluster.local:50053'",
    ),
    (
        "target-namespace-unresolved",
        lambda resources: _container(_find(resources, "Deployment", "engine"))["env"].append(
            _container(_find(resources, "Deployment", "engine"))["env"].pop(0)
        ),
        "GOVMESH_POLICY_TARGET is 'dns:///policy.$(POD_NAMESPACE).svc.cluster.local:50052'",
    ),
    (
        "peer-service-not-headless",
        _on("Service", "policy", _set("spec.clusterIP", None)),
        "Service policy is not headless",
    ),
    (
        "database-url-inline",
        _env(
            "lineage",
            "GOVMESH_DATABASE_URL",
            value="postgresql://govmesh:hunter2@db.example:5432/govmesh",
        ),
        "Deployment lineage GOVMESH_DATABASE_URL is not from a Secret",
    ),
    (
        "private-key-in-config-map",
        lambda resources: resources.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "govmesh-trust", "namespace": "govmesh"},
                "data": {"trust.toml": "", "keys.json": PRIVATE_JWK},
            }
        ),
        "ConfigMap govmesh-trust holds secret material in 'keys.json'",
    ),
    (
        "credentials-in-config-map",
        lambda resources: resources.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "govmesh"},
                "data": {"database": "postgres://admin:s3cret@db:5432/govmesh"},
            }
        ),
        "ConfigMap settings holds secret material in 'database'",
    ),
    (
        "secret-values-in-manifests",
        lambda resources: resources.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "govmesh-database", "namespace": "govmesh"},
                "stringData": {"url": "postgresql://govmesh@db/govmesh"},
            }
        ),
        "Secret govmesh-database carries values in the manifests",
    ),
    (
        "keys-from-config-map",
        _on(
            "Deployment",
            "engine",
            _set(f"{POD}.volumes.0", {"name": "keys", "configMap": {"name": "k"}}),
        ),
        "Deployment engine GOVMESH_KEYS_DIR is not a Secret volume",
    ),
    (
        "every-key-visible",
        _on("Deployment", "engine", _set(f"{POD}.volumes.0.secret.items", None)),
        "Deployment engine sees govmesh keys beyond its own: []",
    ),
    (
        "job-command",
        _on("Job", "db-upgrade", _set(f"{CONTAINER}.command", ["govmesh", "db", "current"])),
        "no Job runs `govmesh db upgrade`",
    ),
    (
        "job-other-database",
        _on(
            "Job",
            "db-upgrade",
            _set(f"{CONTAINER}.env.0.valueFrom.secretKeyRef.name", "other-database"),
        ),
        "Job db-upgrade does not migrate the services' database as its owner",
    ),
    (
        "writable-root",
        _on(
            "Deployment",
            "verification",
            _set(f"{CONTAINER}.securityContext.readOnlyRootFilesystem", False),
        ),
        "container verification readOnlyRootFilesystem is not true",
    ),
    (
        "added-capability",
        _on(
            "Job", "db-upgrade", _set(f"{CONTAINER}.securityContext.capabilities.add", ["NET_RAW"])
        ),
        "container db-upgrade capabilities are not exactly drop ALL",
    ),
    (
        "privilege-escalation",
        _on(
            "Deployment",
            "lineage",
            _set(f"{CONTAINER}.securityContext.allowPrivilegeEscalation", None),
        ),
        "container lineage may escalate privileges",
    ),
    (
        "no-seccomp",
        _on("Deployment", "policy", _set(f"{POD}.securityContext.seccompProfile", None)),
        "Deployment policy pod has no RuntimeDefault seccompProfile",
    ),
    (
        "root",
        _on("Deployment", "engine", _set(f"{POD}.securityContext.runAsNonRoot", False)),
        "Deployment engine pod may run as root",
    ),
    (
        "service-account-token",
        _on("Deployment", "engine", _set(f"{POD}.automountServiceAccountToken", None)),
        "Deployment engine mounts a service account token",
    ),
    (
        "no-limits",
        _on("Deployment", "lineage", _set(f"{CONTAINER}.resources.limits", None)),
        "container lineage resources.limits lacks cpu or memory",
    ),
    (
        "no-tmp",
        _on("Deployment", "policy", _set(f"{CONTAINER}.volumeMounts", [])),
        "container policy has no writable /tmp",
    ),
    (
        "read-only-spool",
        _on("Deployment", "engine", _set(f"{CONTAINER}.volumeMounts.1.readOnly", True)),
        "Deployment engine GOVMESH_SPOOL_DIR is not on a writable volume",
    ),
    (
        "short-termination-grace",
        _on("Deployment", "engine", _set(f"{POD}.terminationGracePeriodSeconds", 12)),
        "terminationGracePeriodSeconds 12 does not cover preStop 5 s + GOVMESH_GRACE_PERIOD_S",
    ),
    (
        "grace-period-outgrows-termination",
        _env("verification", "GOVMESH_GRACE_PERIOD_S", value="60"),
        "Deployment verification terminationGracePeriodSeconds 30 does not cover",
    ),
    (
        "lineage-scaled",
        _on("Deployment", "lineage", _set("spec.replicas", 3)),
        "Deployment lineage runs 3 replicas; lineage is the sequencer",
    ),
    (
        "no-pdb",
        _remove("PodDisruptionBudget", "policy"),
        "Deployment policy has 2 replicas and no PodDisruptionBudget",
    ),
    (
        "pdb-selects-everything",
        _on("PodDisruptionBudget", "engine", _set("spec.selector.matchLabels", {})),
        "PodDisruptionBudget engine selects",
    ),
    (
        "peer-reachable-from-anywhere",
        _on(
            "NetworkPolicy",
            "verification-from-engine",
            _set("spec.ingress.0.from.0.namespaceSelector", {}),
        ),
        "NetworkPolicy lets more than the engine reach verification",
    ),
    (
        "peer-reachable-by-every-pod",
        _on("NetworkPolicy", "policy-from-engine", _set("spec.ingress.0.from.0.podSelector", {})),
        "NetworkPolicy lets more than the engine reach policy",
    ),
    (
        "peer-unreachable",
        _remove("NetworkPolicy", "lineage-from-engine"),
        "NetworkPolicy: the engine cannot reach lineage on 50054",
    ),
    (
        "peer-not-isolated",
        _remove("NetworkPolicy", "default-deny-ingress", "policy-from-engine"),
        "no NetworkPolicy isolates policy",
    ),
    (
        "engine-unreachable",
        _remove("NetworkPolicy", "engine-from-clients"),
        "no NetworkPolicy lets clients reach the engine on 50051",
    ),
    (
        "missing-label",
        _on("Service", "lineage", _set("metadata.labels", {"app.kubernetes.io/name": "govmesh"})),
        "Service lineage lacks app.kubernetes.io/name and part-of labels",
    ),
    (
        "foreign-namespace",
        _on("Service", "engine", _set("metadata.namespace", "default")),
        "Service engine is not in a namespace the base creates",
    ),
    (
        "image-drift",
        _on("Deployment", "policy", _set(f"{CONTAINER}.image", "govmesh:0.0.9")),
        "Deployment policy image govmesh:0.0.9 is not govmesh",
    ),
    (
        "wrong-command",
        _on("Deployment", "verification", _set(f"{CONTAINER}.command", ["govmesh", "up"])),
        "Deployment verification does not run `govmesh serve verification`",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, e) for _, m, e in MUTATIONS], ids=[i for i, _, _ in MUTATIONS]
)
def test_each_property_is_enforced(
    manifests: list[Manifest], mutate: Callable[[list[Manifest]], None], expected: str
) -> None:
    assert not any(expected in p for p in manifest_problems(manifests))
    mutate(manifests)
    problems = manifest_problems(manifests)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (f"{CONTAINER}.livenessProbe.grpc.portt", 50051, "'portt' was unexpected"),
        (f"{CONTAINER}.env.1.value", 50051, "is not of type 'string'"),
        (f"{POD}.securityContext.seccompProfile", {}, "'type' is a required property"),
    ],
)
def test_the_schema_validation_catches_invalid_resources(
    manifests: list[Manifest], path: str, value: Any, expected: str
) -> None:
    _set(path, value)(_find(manifests, "Deployment", "engine"))
    errors = schema_errors(manifests)
    assert len(errors) == len(K8S_VERSIONS)
    assert all("Deployment engine" in e and expected in e for e in errors), errors


def _write_kustomization(directory: Path, kustomization: dict[str, Any], *docs: Manifest) -> None:
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (directory / "all.yaml").write_text(yaml.safe_dump_all(docs))


def _kustomize() -> list[str] | None:
    """The real kustomize, standalone or built into kubectl, if installed."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _by_identity(resources: list[Manifest]) -> list[Manifest]:
    return sorted(resources, key=lambda r: (r["kind"], r["metadata"]["name"]))


def _kustomize_build(directory: Path) -> list[Manifest]:
    command = _kustomize()
    assert command is not None
    out = subprocess.run(
        [*command, str(directory)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


needs_kustomize = pytest.mark.skipif(
    _kustomize() is None, reason="cross-check needs kustomize or kubectl on PATH"
)


@needs_kustomize
def test_render_matches_kustomize_on_the_base(rendered: list[Manifest]) -> None:
    assert _by_identity(rendered) == _by_identity(_kustomize_build(BASE))


def test_render_applies_namespace_labels_and_images_as_kustomize_does(tmp_path: Path) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {
                    "containers": [
                        {"name": "a", "image": "govmesh"},
                        {"name": "b", "image": "registry:5000/team/govmesh:old"},
                        {"name": "c", "image": "other:1"},
                    ]
                },
            },
        },
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}
    _write_kustomization(
        tmp_path,
        {
            "namespace": "ns",
            "labels": [{"pairs": {"team": "t"}, "includeTemplates": True}],
            "images": [
                {"name": "govmesh", "newTag": "1.2"},
                {"name": "registry:5000/team/govmesh", "newName": "r/g", "digest": "sha256:ab"},
            ],
            "resources": ["all.yaml"],
        },
        namespace,
        deployment,
    )
    ns, d = render(tmp_path)
    assert "namespace" not in ns["metadata"] and ns["metadata"]["labels"] == {"team": "t"}
    assert d["metadata"]["namespace"] == "ns"
    assert d["metadata"]["labels"] == {"team": "t"}
    assert d["spec"]["template"]["metadata"]["labels"] == {"app": "d", "team": "t"}
    assert d["spec"]["selector"]["matchLabels"] == {"app": "d"}
    images = [c["image"] for c in d["spec"]["template"]["spec"]["containers"]]
    assert images == ["govmesh:1.2", "r/g@sha256:ab", "other:1"]
    if _kustomize() is not None:
        assert _by_identity(render(tmp_path)) == _by_identity(_kustomize_build(tmp_path))


@pytest.mark.parametrize(
    "kustomization",
    [
        {"resources": ["all.yaml"], "patches": [{"path": "p.yaml"}]},
        {"resources": ["all.yaml"], "commonLabels": {"a": "b"}},
        {"resources": ["all.yaml"], "labels": [{"pairs": {"a": "b"}, "includeSelectors": True}]},
        {"resources": ["all.yaml", "../other"]},
        {"resources": ["all.yaml"], "images": [{"name": "x", "newTagg": "1"}]},
    ],
    ids=["patches", "commonLabels", "includeSelectors", "directory", "image-field"],
)
def test_render_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: dict[str, Any]
) -> None:
    _write_kustomization(
        tmp_path,
        kustomization,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}},
    )
    with pytest.raises(UnsupportedKustomization):
        render(tmp_path)


def test_the_image_runs_as_the_user_the_pods_require(rendered: list[Manifest]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile, re.MULTILINE)
    assert users, "the image must name a numeric USER so runAsNonRoot can be checked"
    uid, gid = int(users[-1][0]), int(users[-1][1] or users[-1][0])
    for workload in rendered:
        if workload["kind"] in _POD_TEMPLATE_KINDS:
            context = workload["spec"]["template"]["spec"]["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), _id(workload)
    assert re.search(r'^ENTRYPOINT \["govmesh"\]$', dockerfile, re.MULTILINE)


def test_the_image_build_copies_everything_the_wheel_is_built_from() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.MULTILINE)
        for source in line.split()[:-1]
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {package.split("/")[0] for package in wheel["packages"]}
    needed |= {source.split("/")[0] for source in wheel.get("force-include", {})}
    assert needed <= copied, sorted(needed - copied)


def test_lineage_writes_as_the_role_that_may_only_append(rendered: list[Manifest]) -> None:
    # The owner's credentials could switch off the log's triggers; the writer role cannot.
    owner = {"secretKeyRef": {"name": "govmesh-database", "key": "url"}}
    writer = {"secretKeyRef": {"name": "govmesh-database", "key": "lineage-url"}}
    assert _env_var(rendered, "lineage", "GOVMESH_DATABASE_URL")["valueFrom"] == writer
    for other in ("verification", "policy"):
        assert _env_var(rendered, other, "GOVMESH_DATABASE_URL")["valueFrom"] == owner


# ---------------------------------------------------------------------------
# deploy/monitoring: the ServiceMonitor, the alerts and the scrape policy.
# ---------------------------------------------------------------------------

MONITORING = ROOT / "deploy" / "monitoring"

#: The parts of the monitoring.coreos.com/v1 schemas the manifests use; anything
#: else (a misspelt field included) is refused, as strict validation would.
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "labels"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
    "additionalProperties": False,
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "additionalProperties": False,
                        "properties": {"matchLabels": _LABELS},
                    },
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
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["alert", "expr", "labels", "annotations"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {
                                                "type": "string",
                                                "pattern": "^[A-Z][A-Za-z0-9]*$",
                                            },
                                            "expr": {"type": "string"},
                                            "for": _DURATION,
                                            "labels": {
                                                "type": "object",
                                                "required": ["severity"],
                                                "properties": {
                                                    "severity": {"enum": ["warning", "critical"]}
                                                },
                                                "additionalProperties": {"type": "string"},
                                            },
                                            "annotations": {
                                                "type": "object",
                                                "required": ["summary"],
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

#: The alerts a platform team relies on, by name.
REQUIRED_ALERTS = {
    "GovmeshDenyRateSpike",
    "GovmeshPeerUnavailable",
    "GovmeshLineageCheckpointStale",
    "GovmeshSpoolNotDraining",
}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}


def exported_series() -> dict[str, set[str]]:
    """Every series name the services export, with its label names (from the code)."""
    from types import SimpleNamespace
    from typing import cast

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from govmesh.engine.metrics import EngineMetrics
    from govmesh.lineage.metrics import LineageMetrics
    from govmesh.policy.authority import Authority
    from govmesh.policy.metrics import PolicyMetrics
    from govmesh.runtime.metrics import LoopCounterFamily, LoopHistogramFamily
    from govmesh.verification.metrics import VerificationMetrics

    registry = CollectorRegistry()
    parts: list[Any] = [
        EngineMetrics(registry),
        VerificationMetrics(registry),
        PolicyMetrics(registry),
        LineageMetrics(registry),
    ]
    parts[1].watch_cache(lambda: (0, 0, 0))
    snapshot = SimpleNamespace(epoch=1, active=SimpleNamespace(version="a"), shadow=None)
    parts[2].watch(cast(Authority, SimpleNamespace(snapshot=snapshot)))
    parts[3].watch(lambda: 0, lambda: 0.0)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    series: dict[str, set[str]] = {}
    for part in parts:
        for metric in vars(part).values():
            if isinstance(metric, MetricWrapperBase):
                name, kind, names = metric._name, str(metric._type), set(metric._labelnames)
            elif isinstance(metric, LoopCounterFamily | LoopHistogramFamily):
                name, kind, names = metric.name, metric.kind, set(metric.labelnames)
            else:
                continue
            for suffix in suffixes[kind]:
                series[name + suffix] = names | ({"le"} if suffix == "_bucket" else set())
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def _selectors(expr: str) -> list[tuple[str, list[tuple[str, str]]]]:
    import promql_parser

    found: list[tuple[str, list[tuple[str, str]]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name or "", [(m.name, m.value) for m in node.matchers.matchers]))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


#: Values a label may take, where the code fixes them (the reasons are the DenyReason names).
def _label_values() -> dict[str, set[str]]:
    from govmesh.engine.metrics import CALL_OUTCOMES, PEERS
    from govmesh.v1 import common_pb2

    return {
        "decision": {"ALLOW", "DENY"},
        "reason": {"none", *common_pb2.DenyReason.keys()},
        "outcome": {*CALL_OUTCOMES, "passed", *common_pb2.DenyReason.keys()},
        "peer": set(PEERS),
    }


def check_alerts(resources: list[Manifest]) -> Iterator[str]:
    """Every alert parses as PromQL and names only series and labels govmesh exports."""
    series = exported_series()
    values = _label_values()
    alerts: set[str] = set()
    for rule_set in _of_kind(resources, "PrometheusRule"):
        for group in rule_set["spec"]["groups"]:
            for rule in group["rules"]:
                alerts.add(rule["alert"])
                try:
                    selectors = _selectors(rule["expr"])
                except ValueError as exc:
                    yield f"alert {rule['alert']} is not PromQL: {exc}"
                    continue
                for name, matchers in selectors:
                    if name not in series:
                        yield f"alert {rule['alert']} names {name}, which govmesh does not export"
                        continue
                    for label, value in matchers:
                        if label not in series[name] | TARGET_LABELS:
                            yield f"alert {rule['alert']}: {name} has no label {label}"
                        wanted = set(re.split(r"[|]", value))
                        if label in values and not wanted <= values[label]:
                            yield f"alert {rule['alert']}: {label} is never {value!r}"
    missing = REQUIRED_ALERTS - alerts
    if missing:
        yield f"no alert named {sorted(missing)}"


def check_monitoring(resources: list[Manifest]) -> Iterator[str]:
    """The ServiceMonitor scrapes every service's metrics port, and Prometheus may reach it."""
    monitors = _of_kind(resources, "ServiceMonitor")
    if not monitors:
        yield "no ServiceMonitor"
    for name, deployment in _deployments(resources).items():
        service = _service_for(resources, deployment)
        if service is None:
            continue
        ports = {p.get("name") for p in service["spec"]["ports"]}
        scraped = [
            m
            for m in monitors
            if _selects(m["spec"]["selector"].get("matchLabels"), service["metadata"]["labels"])
            and any(e["port"] in ports for e in m["spec"]["endpoints"])
        ]
        if not scraped:
            yield f"no ServiceMonitor scrapes the metrics port of {_id(service)}"
        port = _metrics_port(_container(deployment))
        rules = _ingress_rules(resources, _pod_labels(deployment)) or []
        if not any(
            _metrics_only(rule, port)
            and any("namespaceSelector" in f for f in rule.get("from", []))
            for rule in rules
        ):
            yield f"no NetworkPolicy lets Prometheus reach the metrics port of {name}"


@pytest.fixture(scope="module")
def monitored() -> list[Manifest]:
    """The base and deploy/monitoring, as a cluster running both holds them."""
    return render(BASE) + render(MONITORING)


def test_monitoring_renders_a_service_monitor_alerts_and_a_scrape_policy() -> None:
    kinds = sorted(r["kind"] for r in render(MONITORING))
    assert kinds == ["NetworkPolicy", "PrometheusRule", "ServiceMonitor"]


def test_monitoring_validates_against_its_schemas(monitored: list[Manifest]) -> None:
    import jsonschema

    monitoring = render(MONITORING)
    core = [r for r in monitoring if r["kind"] not in CRD_SCHEMAS]
    assert schema_errors(core) == []
    for resource in monitoring:
        if resource["kind"] in CRD_SCHEMAS:
            jsonschema.validate(resource, CRD_SCHEMAS[resource["kind"]])


def test_the_crd_schemas_refuse_a_misspelt_field() -> None:
    import jsonschema

    rule = next(r for r in render(MONITORING) if r["kind"] == "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(jsonschema.ValidationError, match="'fro' was unexpected"):
        jsonschema.validate(rule, CRD_SCHEMAS["PrometheusRule"])


def test_base_and_monitoring_together_keep_every_property(monitored: list[Manifest]) -> None:
    assert manifest_problems(monitored) == []
    assert list(check_monitoring(monitored)) == []
    assert list(check_alerts(monitored)) == []


def _rule_expr(resources: list[Manifest], alert: str, expr: str) -> None:
    for rule_set in _of_kind(resources, "PrometheusRule"):
        for group in rule_set["spec"]["groups"]:
            for rule in group["rules"]:
                if rule["alert"] == alert:
                    rule["expr"] = expr


MONITORING_MUTATIONS: list[tuple[str, Callable[[list[Manifest]], None], str]] = [
    (
        "unknown-metric",
        lambda r: _rule_expr(r, "GovmeshSpoolNotDraining", "govmesh_engine_spool_age > 600"),
        "names govmesh_engine_spool_age, which govmesh does not export",
    ),
    (
        "unknown-label",
        lambda r: _rule_expr(
            r, "GovmeshDenyRateSpike", 'rate(govmesh_engine_decisions_total{verdict="DENY"}[5m])'
        ),
        "govmesh_engine_decisions_total has no label verdict",
    ),
    (
        "impossible-value",
        lambda r: _rule_expr(
            r, "GovmeshDenyRateSpike", 'rate(govmesh_engine_decisions_total{decision="deny"}[5m])'
        ),
        "decision is never 'deny'",
    ),
    (
        "not-promql",
        lambda r: _rule_expr(r, "GovmeshPeerUnavailable", "max(govmesh_engine_peer_breaker_state"),
        "alert GovmeshPeerUnavailable is not PromQL",
    ),
    (
        "alert-missing",
        lambda r: _of_kind(r, "PrometheusRule")[0]["spec"]["groups"][0]["rules"].pop(0),
        "no alert named ['GovmeshDenyRateSpike']",
    ),
    (
        "wrong-scrape-port",
        _on("ServiceMonitor", "govmesh", _set("spec.endpoints.0.port", "http-metrics")),
        "no ServiceMonitor scrapes the metrics port of Service engine",
    ),
    (
        "scrape-policy-missing",
        _remove("NetworkPolicy", "metrics-from-prometheus"),
        "no NetworkPolicy lets Prometheus reach the metrics port of lineage",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [(m, e) for _, m, e in MONITORING_MUTATIONS],
    ids=[i for i, _, _ in MONITORING_MUTATIONS],
)
def test_each_monitoring_property_is_enforced(
    monitored: list[Manifest], mutate: Callable[[list[Manifest]], None], expected: str
) -> None:
    resources = copy.deepcopy(monitored)
    mutate(resources)
    problems = [*check_monitoring(resources), *check_alerts(resources)]
    assert any(expected in p for p in problems), problems


def test_the_scrape_policy_opens_only_the_metrics_port(monitored: list[Manifest]) -> None:
    resources = copy.deepcopy(monitored)
    policy = _find(resources, "NetworkPolicy", "metrics-from-prometheus")
    policy["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 50053})
    problems = manifest_problems(resources)
    assert any("NetworkPolicy lets more than the engine reach verification" in p for p in problems)
