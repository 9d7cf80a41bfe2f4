"""The deploy files read as data, and the rules they must keep, as functions returning problems.

Each ``*_problems`` function returns a list of human-readable problems (empty when the files are
right), so a test can assert the real files have none and that a broken copy is caught.
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.33"  # the oldest version the manifests are promised to apply to
TEMPLATES = {"secret.yaml", "jwks-configmap.yaml"}  # applied by hand, never by kustomize
SECRET_KEYS = {"JOBGATE_DATABASE_URL", "JOBGATE_REDIS_URL", "JOBGATE_CURSOR_SECRET"}

# --- the settings the code reads -----------------------------------------------------------------

_NAME = re.compile(r"JOBGATE_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_{])")


def settings_in_code(app_dir: Path = ROOT / "app") -> set[str]:
    """Every ``JOBGATE_*`` name in ``app/`` (but ``app/ops/``, a client): written out anywhere, or built by a helper such as
    ``get("ENV")`` (``f"JOBGATE_{name}"``) or ``_number(env, "BATCH", ...)`` (``f"JOBGATE_WORKER_{name}"``)."""
    names: set[str] = set()
    for path in app_dir.rglob("*.py"):
        if path.relative_to(app_dir).parts[0] == "ops":
            continue  # the operator's client (`jobgate ops`) reads its own variables, not the gateway's
        source = path.read_text()
        names |= set(_NAME.findall(source))
        names |= _names_built_by_helpers(ast.parse(source))
    return names


def _names_built_by_helpers(tree: ast.Module) -> set[str]:
    helpers: dict[str, str] = {}  # helper name -> prefix of the f-string it formats
    for node in ast.walk(tree):
        scopes: list[tuple[str, ast.AST]] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes.append((node.name, node))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            scopes += [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        for name, scope in scopes:
            for inner in ast.walk(scope):
                if isinstance(inner, ast.JoinedStr) and inner.values:
                    first = inner.values[0]
                    if isinstance(first, ast.Constant) and re.fullmatch(
                        r"JOBGATE_(?:[A-Z0-9]+_)*", str(first.value)
                    ):
                        helpers.setdefault(name, first.value)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
            for arg in node.args:
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and re.fullmatch(r"[A-Z][A-Z0-9_]*", arg.value)
                ):
                    names.add(helpers[node.func.id] + arg.value)
                    break
    return names


# --- loading -------------------------------------------------------------------------------------


def load_k8s(directory: Path = K8S) -> dict[str, list[dict[str, Any]]]:
    """File name -> its documents."""
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(directory.glob("*.yaml"))
    }


def resources(files: dict[str, list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    for docs in files.values():
        for doc in docs:
            if doc.get("kind") != "Kustomization":
                yield doc


def find(files: dict[str, list[dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    for doc in resources(files):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def load_compose(path: Path = DEPLOY / "compose.yaml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def pod_specs(files: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in resources(files):
        if doc["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield f"{doc['kind']} {doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def option(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def mutated(doc: Any, edit: Any) -> Any:
    """A deep copy of ``doc`` after ``edit(copy)``: the broken inputs of the tests that show a rule can fail."""
    clone = copy.deepcopy(doc)
    edit(clone)
    return clone


# --- Kubernetes ----------------------------------------------------------------------------------


def settings_coverage_problems(
    files: dict[str, list[dict[str, Any]]], compose: dict[str, Any], code: set[str]
) -> list[str]:
    """Every setting of the code is in the ConfigMap or the Secret, and nothing there or in compose
    (which sets only what its development stack needs) is a name the code does not read."""
    config = set(find(files, "ConfigMap", "jobgate-config").get("data", {}))
    secret = find(files, "Secret", "jobgate-secrets")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    problems = [
        f"{name} is read by app/ but set by neither the ConfigMap nor the Secret"
        for name in sorted(code - config - secret_keys)
    ]
    problems += [
        f"{name} is in the ConfigMap or Secret but app/ never reads it"
        for name in sorted((config | secret_keys) - code)
    ]
    problems += [f"{name} is in both the ConfigMap and the Secret" for name in sorted(config & secret_keys)]
    problems += [
        f"{name} holds a credential and belongs in the Secret" for name in sorted(SECRET_KEYS & config)
    ]
    compose_names = {
        n for s in compose["services"].values() for n in _environment(s) if n.startswith("JOBGATE_")
    }
    problems += [f"compose sets {name}, which app/ never reads" for name in sorted(compose_names - code)]
    return problems


def gateway_problems(files: dict[str, list[dict[str, Any]]]) -> list[str]:
    problems: list[str] = []
    deployment = find(files, "Deployment", "jobgate-gateway")
    spec = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    selector = deployment["spec"]["selector"]["matchLabels"]
    if not _matches(selector, labels):
        problems.append("the gateway Deployment's selector does not match its pod labels")
    container = spec["containers"][0]
    args = container.get("args", [])
    if args[:1] != ["serve"] or container.get("command"):
        problems.append("the gateway container must run the image's entrypoint with `serve`")
    port = option(args, "--port")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if port is None or int(port) not in ports.values():
        problems.append(
            f"the gateway serves on --port {port} but declares container ports {sorted(ports.values())}"
        )
    if option(args, "--host") != "0.0.0.0":
        problems.append("the gateway must listen on 0.0.0.0 inside the pod")
    for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = container.get(probe_name, {}).get("httpGet")
        if probe is None or probe.get("path") != path:
            problems.append(f"the gateway's {probe_name} must GET {path}")
        elif ports.get(probe["port"], probe["port"]) != (int(port) if port else None):
            problems.append(
                f"the gateway's {probe_name} asks port {probe['port']}, not the serving port {port}"
            )
    readiness = container.get("readinessProbe", {})
    if readiness.get("timeoutSeconds", 1) < 5:  # /readyz spends up to 2 s on PostgreSQL, then 2 s on Redis
        problems.append("the readiness timeout must cover /readyz's two 2 s checks (at least 5 s)")
    resources_ = container.get("resources", {})
    if not {"cpu", "memory"} <= set(resources_.get("requests", {})) or "memory" not in resources_.get(
        "limits", {}
    ):
        problems.append("the gateway needs cpu and memory requests and a memory limit")
    workers = int(option(args, "--workers") or 1)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    multiproc = env.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc is None:
        problems.append(
            "the gateway must set PROMETHEUS_MULTIPROC_DIR (app/metrics.py adds the processes up)"
        )
    elif not _is_emptydir_mount(spec, container, multiproc):
        problems.append(f"PROMETHEUS_MULTIPROC_DIR {multiproc} is not an emptyDir mount")
    if workers < 1:
        problems.append("--workers must be at least 1")
    config = find(files, "ConfigMap", "jobgate-config")["data"]
    grace = float(config.get("JOBGATE_SHUTDOWN_GRACE_SECONDS") or 30)
    pause = _prestop_sleep(container)
    if spec.get("terminationGracePeriodSeconds", 30) < pause + grace + 5:
        problems.append(
            f"terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds', 30)} does not cover the preStop "
            f"pause ({pause} s) + JOBGATE_SHUTDOWN_GRACE_SECONDS ({grace:g} s) + 5 s"
        )

    service = find(files, "Service", "jobgate-gateway")
    if not _matches(service["spec"]["selector"], labels):
        problems.append("the Service's selector does not select the gateway pods")
    if _matches(service["spec"]["selector"], _labels_of(files, "jobgate-worker")):
        problems.append("the Service's selector also selects the worker pods")
    for service_port in service["spec"]["ports"]:
        target = service_port.get("targetPort", service_port["port"])
        if ports.get(target, target) != (int(port) if port else None):
            problems.append(f"the Service targets port {target}, not the gateway's {port}")

    hpa = find(files, "HorizontalPodAutoscaler", "jobgate-gateway")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["apiVersion"], target["kind"], target["name"]) != ("apps/v1", "Deployment", "jobgate-gateway"):
        problems.append(f"the HPA scales {target['kind']} {target['name']}, not the gateway Deployment")
    if hpa["spec"].get("minReplicas", 1) < 2:
        problems.append("the HPA must keep at least two gateways (the PDB's minAvailable 1 needs a second)")

    pdb = find(files, "PodDisruptionBudget", "jobgate-gateway")
    if not _matches(pdb["spec"]["selector"]["matchLabels"], labels):
        problems.append("the PodDisruptionBudget does not select the gateway pods")
    if _matches(pdb["spec"]["selector"]["matchLabels"], _labels_of(files, "jobgate-worker")):
        problems.append("the PodDisruptionBudget also selects the worker pods")
    return problems


def worker_problems(files: dict[str, list[dict[str, Any]]]) -> list[str]:
    problems: list[str] = []
    deployment = find(files, "Deployment", "jobgate-worker")
    spec = deployment["spec"]["template"]["spec"]
    if not _matches(
        deployment["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    ):
        problems.append("the worker Deployment's selector does not match its pod labels")
    container = spec["containers"][0]
    if container.get("args", [])[:1] != ["worker"] or container.get("command"):
        problems.append("the worker container must run the image's entrypoint with `worker`")
    config = find(files, "ConfigMap", "jobgate-config")["data"]
    grace = float(config.get("JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS") or 10)
    # app/engine/worker.py _drain: grace for running jobs, then up to grace + 5 s to record the rest.
    if spec.get("terminationGracePeriodSeconds", 30) < 2 * grace + 5:
        problems.append(
            f"the worker's terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds', 30)} is below "
            f"2 x JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS + 5 = {2 * grace + 5:g}"
        )
    metrics_port = option(container.get("args", []), "--metrics-port")
    declared = {p["containerPort"] for p in container.get("ports", [])}
    if metrics_port is None or int(metrics_port) not in declared:
        problems.append(
            f"the worker must serve its metrics (--metrics-port {metrics_port}) on a declared port"
        )
    if option(container.get("args", []), "--metrics-host") != "0.0.0.0":
        problems.append("the worker's metrics must listen on 0.0.0.0 to be scraped")
    concurrency = int(option(container.get("args", []), "--concurrency") or default_concurrency())
    pool = int(settings_env(files, "worker").get("JOBGATE_DATABASE_POOL_SIZE") or 20)
    if pool < worker_connections(concurrency):
        problems.append(
            f"the worker's pool of {pool} is below the {worker_connections(concurrency)} connections its loops may hold"
        )
    job = find(files, "Job", "jobgate-migrate")
    migrate = job["spec"]["template"]["spec"]["containers"][0]
    if migrate.get("args") != ["db", "upgrade"] or migrate.get("command"):
        problems.append("the migration Job must run `jobgate db upgrade`")
    return problems


def default_concurrency() -> int:
    """What ``jobgate worker`` runs at once without ``--concurrency``."""
    from app.cli import worker

    return next(p.default for p in worker.params if p.name == "concurrency")


def worker_connections(concurrency: int) -> int:
    """What one worker's loops may hold at once (app/engine/worker.py): outcome writes, bounded by
    a semaphore of 8, plus the claim, the heartbeat and one per background step (app/engine/steps.py)."""
    from app.engine.steps import background_steps

    return min(concurrency, 8) + 2 + len(background_steps())


def connection_budget(files: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """The most PostgreSQL connections the manifests can open: every gateway pod the HPA allows
    plus the rollout's surge pod, every worker plus its surge pod, and the migration Job."""
    gateway = find(files, "Deployment", "jobgate-gateway")
    worker = find(files, "Deployment", "jobgate-worker")
    hpa = find(files, "HorizontalPodAutoscaler", "jobgate-gateway")
    gateway_args = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
    processes = int(option(gateway_args, "--workers") or 1)

    def surge(deployment: dict[str, Any]) -> int:
        return int(deployment["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1))

    gateways = (
        (hpa["spec"]["maxReplicas"] + surge(gateway))
        * processes
        * int(settings_env(files, "gateway")["JOBGATE_DATABASE_POOL_SIZE"])
    )
    workers = (worker["spec"]["replicas"] + surge(worker)) * int(
        settings_env(files, "worker")["JOBGATE_DATABASE_POOL_SIZE"]
    )
    return {"gateways": gateways, "workers": workers, "migrate": 1, "total": gateways + workers + 1}


def pod_problems(files: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every pod: non-root, read-only root, no privilege escalation, the one image, every setting."""
    problems: list[str] = []
    images: set[str] = set()
    config = find(files, "ConfigMap", "jobgate-config")["data"]
    jwks_file = config.get("JOBGATE_AUTH_JWKS_FILE") or ""
    for where, spec in pod_specs(files):
        pod_context = spec.get("securityContext", {})
        for container in spec.get("initContainers", []) + spec["containers"]:
            name = f"{where} container {container['name']}"
            context = {**pod_context, **container.get("securityContext", {})}
            if context.get("runAsNonRoot") is not True or context.get("runAsUser", 0) == 0:
                problems.append(f"{name} must run as a non-root UID (runAsNonRoot and runAsUser)")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name} must have a read-only root filesystem")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name} must not allow privilege escalation")
            if "ALL" not in context.get("capabilities", {}).get("drop", []):
                problems.append(f"{name} must drop all capabilities")
            if context.get("seccompProfile", {}).get("type") not in {"RuntimeDefault", "Localhost"}:
                problems.append(f"{name} needs a seccomp profile (restricted pod security)")
            if not _is_emptydir_mount(spec, container, "/tmp"):
                problems.append(f"{name} needs an emptyDir at /tmp (the root filesystem is read-only)")
            images.add(container["image"])
            refs = {
                (r.get("configMapRef") or {}).get("name") or (r.get("secretRef") or {}).get("name")
                for r in container.get("envFrom", [])
            }
            if not {"jobgate-config", "jobgate-secrets"} <= refs:
                problems.append(f"{name} must take its settings from jobgate-config and jobgate-secrets")
            if jwks_file and not _mounts_configmap_key(spec, container, jwks_file):
                problems.append(
                    f"{name} does not mount JOBGATE_AUTH_JWKS_FILE {jwks_file} (the settings refuse a missing file)"
                )
    if len(images) != 1:
        problems.append(f"every pod must run the same image, found {sorted(images)}")
    return problems


def kustomization_problems(files: dict[str, list[dict[str, Any]]]) -> list[str]:
    kustomization = files["kustomization.yaml"][0]
    listed = set(kustomization.get("resources", []))
    present = set(files) - {"kustomization.yaml"}
    problems = [
        f"{name} is not listed in kustomization.yaml" for name in sorted(present - listed - TEMPLATES)
    ]
    problems += [
        f"kustomization.yaml lists {name}, which does not exist" for name in sorted(listed - present)
    ]
    problems += [
        f"kustomization.yaml applies the template {name} (it would overwrite the real one)"
        for name in sorted(listed & TEMPLATES)
    ]
    return problems


def settings_env(files: dict[str, list[dict[str, Any]]], container_name: str) -> dict[str, str]:
    """The environment a container starts with: ConfigMap, then Secret, then its own ``env``."""
    env: dict[str, str] = {}
    for where, spec in pod_specs(files):
        for container in spec["containers"]:
            if container["name"] != container_name:
                continue
            for ref in container.get("envFrom", []):
                if "configMapRef" in ref:
                    env.update(find(files, "ConfigMap", ref["configMapRef"]["name"])["data"])
                if "secretRef" in ref:
                    env.update(find(files, "Secret", ref["secretRef"]["name"])["stringData"])
            env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
            return env
    raise AssertionError(f"no container {container_name}")


def _labels_of(files: dict[str, list[dict[str, Any]]], deployment: str) -> dict[str, str]:
    return find(files, "Deployment", deployment)["spec"]["template"]["metadata"].get("labels", {})


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _volume(
    spec: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if mount["mountPath"].rstrip("/") == path.rstrip("/") and mount["name"] in volumes:
            return mount, volumes[mount["name"]]
    return None


def _is_emptydir_mount(spec: dict[str, Any], container: dict[str, Any], path: str) -> bool:
    found = _volume(spec, container, path)
    return found is not None and "emptyDir" in found[1]


def _mounts_configmap_key(spec: dict[str, Any], container: dict[str, Any], file: str) -> bool:
    directory, _, key = file.rpartition("/")
    found = _volume(spec, container, directory)
    if found is None or "configMap" not in found[1] and "secret" not in found[1]:
        return False
    source = found[1].get("configMap") or found[1].get("secret")
    items = source.get("items")
    return items is None or any(i["path"] == key for i in items)


def _prestop_sleep(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return float(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else 0.0


# --- compose -------------------------------------------------------------------------------------


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


JOBGATE_SERVICES = ("migrate", "gateway", "worker")
_DEV_MARK = "dev-only"
_USERINFO = re.compile(r"://[^/@:]*:([^/@]+)@")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE", re.IGNORECASE)


def compose_problems(compose: dict[str, Any], nginx_conf: str) -> list[str]:
    services = compose.get("services", {})
    problems = [
        f"compose has no {name} service"
        for name in ("postgres", "redis", "proxy", *JOBGATE_SERVICES)
        if name not in services
    ]
    if problems:
        return problems
    if not str(services["postgres"].get("image", "")).startswith("postgres:16"):
        problems.append("compose must run postgres:16")
    if not str(services["redis"].get("image", "")).startswith("redis:7"):
        problems.append("compose must run redis:7")
    builds = {
        name: (services[name].get("image"), repr(services[name].get("build"))) for name in JOBGATE_SERVICES
    }
    if len(set(builds.values())) != 1 or None in {image for image, _ in builds.values()}:
        problems.append(f"migrate, gateway and worker must use one image built one way: {builds}")
    migrate = [*(services["migrate"].get("entrypoint") or []), *_command(services["migrate"])]
    if "jobgate db upgrade" not in " ".join(migrate) and migrate[:2] != ["db", "upgrade"]:
        problems.append("the migrate service must run `jobgate db upgrade`")
    for name in ("gateway", "worker"):
        depends = services[name].get("depends_on") or {}
        if (
            not isinstance(depends, dict)
            or depends.get("migrate", {}).get("condition") != "service_completed_successfully"
        ):
            problems.append(f"{name} must wait for migrate with condition service_completed_successfully")
        for store in ("postgres", "redis"):
            if not isinstance(depends, dict) or depends.get(store, {}).get("condition") != "service_healthy":
                problems.append(f"{name} must wait for a healthy {store}")
        if int((services[name].get("deploy") or {}).get("replicas", 1)) != 2:
            problems.append(f"compose must run two {name} replicas (deploy.replicas: 2)")
    if (services["migrate"].get("depends_on") or {}).get("postgres", {}).get(
        "condition"
    ) != "service_healthy":
        problems.append("migrate must wait for a healthy postgres")
    gateway_command = _command(services["gateway"])
    if gateway_command[:1] != ["serve"] or option(gateway_command, "--host") != "0.0.0.0":
        problems.append("the gateway service must run `serve --host 0.0.0.0`")
    if _command(services["worker"])[:1] != ["worker"]:
        problems.append("the worker service must run `worker`")
    for name in ("postgres", "redis", "gateway", "proxy"):
        check = services[name].get("healthcheck") or {}
        if check.get("disable") or not check.get("test"):
            problems.append(f"{name} needs a health check")
    gateway_check = " ".join(services["gateway"]["healthcheck"]["test"])
    port = option(gateway_command, "--port") or "8080"
    if f":{port}/healthz" not in gateway_check:
        problems.append(f"the gateway's health check must ask /healthz on port {port}")
    if (services["proxy"].get("depends_on") or {}).get("gateway", {}).get("condition") != "service_healthy":
        problems.append("the proxy must wait for healthy gateways")
    upstreams = re.findall(r"^\s*server\s+([^\s;:]+):(\d+)", nginx_conf, re.MULTILINE)
    if upstreams != [("gateway", port)]:
        problems.append(f"nginx's upstream must be the gateway service on port {port}, found {upstreams}")
    if not re.search(r"proxy_pass\s+http://jobgate_gateway\s*;", nginx_conf):
        problems.append("nginx must proxy_pass to the jobgate_gateway upstream")
    multiproc = _environment(services["gateway"]).get("PROMETHEUS_MULTIPROC_DIR")
    if not multiproc or multiproc not in (services["gateway"].get("tmpfs") or []):
        problems.append("the gateway must set PROMETHEUS_MULTIPROC_DIR to a tmpfs of its own")
    gateway_grace = float(_environment(services["gateway"]).get("JOBGATE_SHUTDOWN_GRACE_SECONDS") or 30)
    worker_grace = float(_environment(services["worker"]).get("JOBGATE_WORKER_SHUTDOWN_GRACE_SECONDS") or 10)
    for name, needed in (("gateway", gateway_grace + 5), ("worker", 2 * worker_grace + 5)):
        given = _seconds(services[name].get("stop_grace_period", "10s"))
        if given < needed:
            problems.append(
                f"{name}'s stop_grace_period {given:g} s is below the {needed:g} s its shutdown may take"
            )
    problems += _inline_secret_problems(services)
    return problems


def _seconds(duration: str | int) -> float:
    """A compose duration such as ``1m30s`` or ``40s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    return sum(float(n) * units[u] for n, u in parts) if parts else float(duration)


def _inline_secret_problems(services: dict[str, Any]) -> list[str]:
    """A literal secret in compose is allowed only when it says it is for development."""
    problems: list[str] = []
    for service_name, service in services.items():
        for key, value in _environment(service).items():
            secrets = _USERINFO.findall(value)
            if _SECRET_NAME.search(key) and value:
                secrets.append(value)
            problems += [
                f"{service_name}: {key} holds a secret literal not marked {_DEV_MARK!r}"
                for secret in secrets
                if _DEV_MARK not in secret
            ]
    return problems


def compose_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    return _environment(compose["services"][service])


# --- the image -----------------------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The stages of a Dockerfile as lists of (INSTRUCTION, arguments), continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, rest.strip()))
    return stages


_BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|libpq-dev|python3-dev|cargo|rustc)\b")


def image_problems(dockerfile: str, dockerignore: str, gateway_port: int) -> list[str]:
    import json

    stages = dockerfile_stages(dockerfile)
    if len(stages) < 2:
        return ["the Dockerfile must have a builder stage and a runtime stage"]
    final = stages[-1]
    problems: list[str] = []
    preamble = re.split(r"^FROM\s", dockerfile, maxsplit=1, flags=re.MULTILINE)[0]
    args = dict(m.groups() for m in re.finditer(r"^ARG\s+(\w+)=(\S+)", preamble, re.MULTILINE))
    base = final[0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
    version = re.search(r"python:(\d+)\.(\d+)", base)
    if not version or (int(version.group(1)), int(version.group(2))) < (3, 11) or "slim" not in base:
        problems.append(f"the runtime stage must start from a slim Python 3.11+ image, not {base}")
    for instruction, rest in final:
        if instruction == "RUN" and _BUILD_TOOLS.search(rest):
            problems.append(f"the runtime stage installs build tools: RUN {rest[:80]}")
    users = [rest for instruction, rest in final if instruction == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]):
        problems.append(
            "the runtime stage must switch to a fixed non-root numeric USER (runAsNonRoot verifies UIDs)"
        )
    if not any(i == "COPY" and "--from=" in r for i, r in final):
        problems.append("the runtime stage must copy the built environment from the builder stage")
    checks = [rest for instruction, rest in final if instruction == "HEALTHCHECK"]
    if not checks or f"127.0.0.1:{gateway_port}/healthz" not in checks[-1] or "curl" in checks[-1]:
        problems.append(f"the image needs a HEALTHCHECK asking /healthz on port {gateway_port} with python")
    entrypoint = [json.loads(r) for i, r in final if i == "ENTRYPOINT"]
    cmd = [json.loads(r) for i, r in final if i == "CMD"]
    if entrypoint[-1:] != [["jobgate"]]:
        problems.append('the image\'s ENTRYPOINT must be ["jobgate"]')
    if (
        not cmd
        or cmd[-1][:1] != ["serve"]
        or option(cmd[-1], "--port") != str(gateway_port)
        or option(cmd[-1], "--host") != "0.0.0.0"
    ):
        problems.append(f"the image's CMD must be serve --host 0.0.0.0 --port {gateway_port}")
    ignored = {
        line.strip() for line in dockerignore.splitlines() if line.strip() and not line.startswith("#")
    }
    for needed in (".jobgate", ".venv", ".git"):
        if needed not in ignored:
            problems.append(f"the build context must ignore {needed}")
    return problems
