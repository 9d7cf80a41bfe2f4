"""The Kubernetes manifests: valid against the pinned Kubernetes schemas, and consistent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.manifests import (
    KUBERNETES_VERSION,
    ROOT,
    connection_budget,
    find,
    gateway_problems,
    kustomization_problems,
    load_k8s,
    mutated,
    pod_problems,
    resources,
    worker_problems,
)

FILES = load_k8s()
DOCUMENTS = [(f"{d['kind']}/{d['metadata']['name']}", d) for d in resources(FILES)]


def gateway(files: dict) -> dict[str, Any]:
    return find(files, "Deployment", "jobgate-gateway")["spec"]["template"]["spec"]


def gateway_container(files: dict) -> dict[str, Any]:
    return gateway(files)["containers"][0]


@pytest.mark.parametrize("document", [d for _, d in DOCUMENTS], ids=[i for i, _ in DOCUMENTS])
def test_manifest_is_valid_for_the_pinned_kubernetes_version_in_strict_mode(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_every_kind_the_deployment_needs_is_there() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in DOCUMENTS}
    assert {
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "Job"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
    } <= kinds


def test_a_misspelt_field_fails_strict_validation() -> None:
    broken = mutated(
        find(FILES, "Deployment", "jobgate-gateway"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readynessProbe={}),
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_gateway_probes_service_autoscaler_and_disruption_budget_agree_with_the_deployment() -> None:
    assert gateway_problems(FILES) == []


def test_worker_and_migration_job_run_their_commands_within_the_shutdown_grace() -> None:
    assert worker_problems(FILES) == []


def test_every_pod_runs_non_root_read_only_with_one_image_and_every_setting() -> None:
    assert pod_problems(FILES) == []


def test_kustomization_applies_every_manifest_but_the_templates() -> None:
    assert kustomization_problems(FILES) == []


def _set(target: Callable[[dict], dict], /, **values: Any) -> Callable[[dict], None]:
    return lambda files: target(files).update(values)


BROKEN_GATEWAYS = {
    "readiness on /healthz": (
        _set(lambda f: gateway_container(f)["readinessProbe"]["httpGet"], path="/healthz"),
        "the gateway's readinessProbe must GET /readyz",
    ),
    "liveness on another port": (
        _set(lambda f: gateway_container(f)["livenessProbe"]["httpGet"], port=9090),
        "the gateway's livenessProbe asks port 9090, not the serving port 8080",
    ),
    "serving port not declared": (
        lambda f: gateway_container(f).update(args=["serve", "--host", "0.0.0.0", "--port", "9000"]),
        "the gateway serves on --port 9000 but declares container ports [8080]",
    ),
    "service selects another component": (
        _set(
            lambda f: find(f, "Service", "jobgate-gateway")["spec"]["selector"],
            **{"app.kubernetes.io/component": "api"},
        ),
        "the Service's selector does not select the gateway pods",
    ),
    "autoscaler targets the worker": (
        _set(
            lambda f: find(f, "HorizontalPodAutoscaler", "jobgate-gateway")["spec"]["scaleTargetRef"],
            name="jobgate-worker",
        ),
        "the HPA scales Deployment jobgate-worker, not the gateway Deployment",
    ),
    "disruption budget selects every jobgate pod": (
        lambda f: find(f, "PodDisruptionBudget", "jobgate-gateway")["spec"]["selector"]["matchLabels"].pop(
            "app.kubernetes.io/component"
        ),
        "the PodDisruptionBudget also selects the worker pods",
    ),
    "grace shorter than the shutdown": (
        _set(gateway, terminationGracePeriodSeconds=30),
        "terminationGracePeriodSeconds 30 does not cover the preStop pause (5.0 s) + JOBGATE_SHUTDOWN_GRACE_SECONDS (30 s) + 5 s",
    ),
    "no multiprocess metrics directory": (
        lambda f: gateway_container(f).update(env=[]),
        "the gateway must set PROMETHEUS_MULTIPROC_DIR (app/metrics.py adds the processes up)",
    ),
}


@pytest.mark.parametrize("edit,problem", BROKEN_GATEWAYS.values(), ids=BROKEN_GATEWAYS.keys())
def test_a_broken_gateway_manifest_is_reported(edit: Callable[[dict], None], problem: str) -> None:
    assert problem in gateway_problems(mutated(FILES, edit))


def _worker_spec(files: dict) -> dict[str, Any]:
    return find(files, "Deployment", "jobgate-worker")["spec"]["template"]["spec"]


BROKEN_PODS = {
    "root user": (
        _set(lambda f: _worker_spec(f)["securityContext"], runAsNonRoot=False),
        "Deployment jobgate-worker container worker must run as a non-root UID (runAsNonRoot and runAsUser)",
    ),
    "writable root filesystem": (
        _set(lambda f: gateway_container(f)["securityContext"], readOnlyRootFilesystem=False),
        "Deployment jobgate-gateway container gateway must have a read-only root filesystem",
    ),
    "another image": (
        _set(lambda f: _worker_spec(f)["containers"][0], image="registry.example.com/stella/jobgate:0.2.0"),
        "every pod must run the same image, found ['registry.example.com/stella/jobgate:0.1.0', 'registry.example.com/stella/jobgate:0.2.0']",
    ),
    "no JWKS mount in the migration Job": (
        lambda f: find(f, "Job", "jobgate-migrate")["spec"]["template"]["spec"]["containers"][0][
            "volumeMounts"
        ].pop(),
        (
            "Job jobgate-migrate container migrate does not mount JOBGATE_AUTH_JWKS_FILE "
            "/etc/jobgate/jwks/jwks.json (the settings refuse a missing file)"
        ),
    ),
    "no secret reference": (
        lambda f: _worker_spec(f)["containers"][0]["envFrom"].pop(),
        "Deployment jobgate-worker container worker must take its settings from jobgate-config and jobgate-secrets",
    ),
}


@pytest.mark.parametrize("edit,problem", BROKEN_PODS.values(), ids=BROKEN_PODS.keys())
def test_a_pod_breaking_the_common_rules_is_reported(edit: Callable[[dict], None], problem: str) -> None:
    assert problem in pod_problems(mutated(FILES, edit))


def test_a_worker_killed_before_its_drain_ends_is_reported() -> None:
    files = mutated(FILES, _set(_worker_spec, terminationGracePeriodSeconds=15))
    assert worker_problems(files) == [
        "the worker's terminationGracePeriodSeconds 15 is below 2 x JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS + 5 = 25"
    ]


def test_a_worker_without_a_scrapable_metrics_port_is_reported() -> None:
    files = mutated(FILES, lambda f: _worker_spec(f)["containers"][0].pop("ports"))
    assert worker_problems(files) == [
        "the worker must serve its metrics (--metrics-port 9100) on a declared port"
    ]


def test_a_worker_pool_smaller_than_its_loops_is_reported() -> None:
    files = mutated(FILES, lambda f: _worker_spec(f)["containers"][0]["env"][0].update(value="10"))
    assert worker_problems(files) == [
        "the worker's pool of 10 is below the 15 connections its loops may hold"
    ]


def test_the_connection_budget_in_the_docs_is_the_manifests_budget() -> None:
    budget = connection_budget(FILES)
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert f"**{budget['total']}** connections" in docs, budget


def test_a_kustomization_applying_the_secret_template_is_reported() -> None:
    files = mutated(FILES, lambda f: f["kustomization.yaml"][0]["resources"].append("secret.yaml"))
    assert kustomization_problems(files) == [
        "kustomization.yaml applies the template secret.yaml (it would overwrite the real one)"
    ]
