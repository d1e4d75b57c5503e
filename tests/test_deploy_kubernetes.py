"""deploy/kubernetes/: every manifest valid against the Kubernetes schemas, and shaped as
the README says (a Deployment per part, probes, headless Services, Secrets only where
they are used, PodDisruptionBudgets, autoscalers, network policies)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from mxfed.config import PART_NAMES, SERVICE_NAMES
from mxfed.protogen import REPO_ROOT

MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes these manifests are for (native gRPC probes are GA since 1.27),
# and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
SIGNERS = {"keys", "events", "sender", "backfill", "media", "accounts"}
COMPONENT = "app.kubernetes.io/component"


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())


def _documents() -> list[dict[str, Any]]:
    found = []
    for name in _kustomization()["resources"]:
        found.extend(doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc)
    return found


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _documents() if doc["kind"] == kind}


def _container(part: str) -> dict[str, Any]:
    [container] = _objects("Deployment")[part]["spec"]["template"]["spec"]["containers"]
    return container


def _pod(part: str) -> dict[str, Any]:
    return _objects("Deployment")[part]["spec"]["template"]["spec"]


def _config() -> dict[str, str]:
    return _objects("ConfigMap")["mxfed"]["data"]


@pytest.fixture(scope="module")
def generated_secrets(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The Secrets the kustomization's secretGenerator makes from what `mxfed init` writes
    (the README's steps), built here as kustomize would build them."""
    secrets_dir = tmp_path_factory.mktemp("kubernetes") / "secrets"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MXFED_")}
    environment.update(MXFED_DATA_DIR=str(secrets_dir), MXFED_SERVER_NAME="example.org")
    subprocess.run(
        [sys.executable, "-m", "mxfed.cli", "init"],
        env=environment,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (secrets_dir / "database-password").write_text("secret\n")
    secrets = []
    for generator in _kustomization()["secretGenerator"]:
        data = {}
        for entry in generator["files"]:
            key, _, path = entry.partition("=")
            assert path.startswith("secrets/"), entry
            data[key] = base64.b64encode((secrets_dir.parent / path).read_bytes()).decode()
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": generator["name"]},
                "type": generator.get("type", "Opaque"),
                "data": data,
            }
        )
    # The CA key is made, and stays out of every Secret.
    assert (secrets_dir / "internal" / "ca.key").exists()
    return secrets


def test_the_kustomization_lists_every_manifest() -> None:
    files = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(_kustomization()["resources"]) == files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(
    version: str, generated_secrets: list[dict[str, Any]]
) -> None:
    documents = _documents() + generated_secrets
    assert len(documents) > 30
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{document['kind']} {document['metadata']['name']}: {exc.message}")


def test_a_deployment_per_part_with_requests_and_limits() -> None:
    deployments = _objects("Deployment")
    assert set(deployments) == {*PART_NAMES, "federation"}
    for name in deployments:
        resources = (
            _container(name)["resources"]
            if name != "federation"
            else deployments[name]["spec"]["template"]["spec"]["containers"][0]["resources"]
        )
        for kind in ("cpu", "memory"):
            assert kind in resources["requests"] and kind in resources["limits"], (name, kind)
        assert _mebibytes(resources["requests"]["memory"]) <= _mebibytes(
            resources["limits"]["memory"]
        )
    for part in PART_NAMES:
        # Sized from the measured idle RSS of a part (68-81 MiB): never below it.
        assert _mebibytes(_container(part)["resources"]["requests"]["memory"]) >= 96, part


def _mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_services_are_probed_with_native_grpc_on_the_health_port() -> None:
    health_port = int(_config()["MXFED_HEALTH_LISTEN"].rpartition(":")[2])
    for part in SERVICE_NAMES:
        container = _container(part)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": health_port}, (part, probe)
    gateway = _container("gateway")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"] == {"path": "/health", "port": 8448, "scheme": "HTTPS"}


def test_secrets_are_mounted_only_where_they_are_used() -> None:
    config = _config()
    for part in PART_NAMES:
        pod = _pod(part)
        secrets = {
            volume["secret"]["secretName"]: volume["name"]
            for volume in pod["volumes"]
            if "secret" in volume
        }
        mounts = {mount["name"]: mount for mount in _container(part)["volumeMounts"]}
        # Its own internal certificate, where internal_tls_dir expects it, read-only.
        own = mounts[secrets[f"mxfed-internal-{part}"]]
        assert own["mountPath"] == f"{config['MXFED_INTERNAL_TLS_DIR']}/part-{part}"
        assert own["readOnly"] is True
        assert not [name for name in secrets if name.startswith("mxfed-internal-")][1:]
        # The signing key and the database password only in the parts that sign and store.
        assert ("mxfed-signing-key" in secrets) == (part in SIGNERS), part
        assert ("mxfed-database" in secrets) == (part in SIGNERS), part
        assert ("mxfed-federation-tls" in secrets) == (part == "gateway"), part
        if part in SIGNERS:
            signing = mounts[secrets["mxfed-signing-key"]]["mountPath"]
            assert config["MXFED_SIGNING_KEY_PATH"] == f"{signing}/signing.key"
            password = mounts[secrets["mxfed-database"]]["mountPath"]
            environment = {e["name"]: e["value"] for e in _container(part)["env"]}
            assert environment["MXFED_DATABASE_PASSWORD_FILE"] == f"{password}/password"
    assert "PASSWORD" not in " ".join(config)
    assert urlsplit(config["DATABASE_URL"]).password is None


def test_services_are_headless_and_match_the_configured_addresses() -> None:
    config = _config()
    services = _objects("Service")
    deployments = _objects("Deployment")
    for part in PART_NAMES:
        service = services[part]["spec"]
        assert service["clusterIP"] == "None", part  # every replica's address in DNS
        labels = deployments[part]["spec"]["template"]["metadata"]["labels"]
        assert service["selector"].items() <= labels.items()
        if part in SERVICE_NAMES:
            [grpc] = [port for port in service["ports"] if port["name"] == "grpc"]
            upper = part.upper()
            assert config[f"MXFED_{upper}_ADDRESS"] == f"dns:///{part}:{grpc['port']}"
            assert config[f"MXFED_{upper}_LISTEN"] == f"0.0.0.0:{grpc['port']}"
    # Only the proxy is a load-balanced Service reachable from outside.
    exposed = {name for name, s in services.items() if s["spec"].get("type") == "LoadBalancer"}
    assert exposed == {"federation"}


def test_disruption_budgets_and_autoscalers() -> None:
    deployments = _objects("Deployment")
    budgets = _objects("PodDisruptionBudget")
    assert set(budgets) == set(deployments)
    for name, budget in budgets.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    autoscalers = _objects("HorizontalPodAutoscaler")
    assert set(autoscalers) == {"gateway", "events", "sender"}
    for name, autoscaler in autoscalers.items():
        assert autoscaler["spec"]["scaleTargetRef"]["name"] == name
        assert autoscaler["spec"]["minReplicas"] >= 2
        # The autoscaler owns the replica count.
        assert "replicas" not in deployments[name]["spec"]


def test_network_policies_expose_only_the_federation_proxy() -> None:
    policies = _objects("NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    open_to_anyone = [
        policy["spec"]["podSelector"]
        for policy in policies.values()
        for rule in policy["spec"].get("ingress", [])
        if "from" not in rule
    ]
    assert open_to_anyone == [
        {"matchLabels": {"app.kubernetes.io/name": "mxfed", COMPONENT: "federation"}}
    ]
    gateway = policies["gateway-from-federation-proxy"]["spec"]["ingress"]
    assert [peer["podSelector"]["matchLabels"][COMPONENT] for peer in gateway[0]["from"]] == [
        "federation"
    ]


def test_the_proxy_configuration_is_the_compose_one() -> None:
    data = _objects("ConfigMap")["mxfed-federation-proxy"]["data"]["haproxy.cfg"]
    assert data == (REPO_ROOT / "deploy" / "compose" / "haproxy.cfg").read_text()
    [proxy] = _objects("Deployment")["federation"]["spec"]["template"]["spec"]["containers"]
    environment = {e["name"]: e["value"] for e in proxy["env"]}
    namespace = _kustomization()["namespace"]
    assert environment["GATEWAY_HOST"] == f"gateway.{namespace}.svc.cluster.local"


def test_the_configuration_loads(tmp_path: Path) -> None:
    """The ConfigMap's options pass mxfed's own checks (with files where it wants them)."""
    from mxfed.config import load_config

    environment = dict(_config())
    for option in ("MXFED_DATA_DIR", "MXFED_INTERNAL_TLS_DIR", "MXFED_MEDIA_STORE_PATH"):
        environment[option] = str(tmp_path)
    for option in ("MXFED_SIGNING_KEY_PATH", "MXFED_TLS_CERTIFICATE_PATH"):
        environment[option] = str(tmp_path / Path(environment[option]).name)
    environment["MXFED_TLS_PRIVATE_KEY_PATH"] = str(tmp_path / "tls.key")
    config = load_config(None, environ=environment)
    assert config.health_listen == "0.0.0.0:8081"
