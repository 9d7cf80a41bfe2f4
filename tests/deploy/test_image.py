"""The image definition: multi-stage, no build tools at run time, non-root, a python health check."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import DEPLOY, find, image_problems, load_k8s, option

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
IGNORE = (DEPLOY / "Dockerfile.dockerignore").read_text()
# The port the Kubernetes gateway serves on: the image's default command must agree with it.
PORT = int(
    option(
        find(load_k8s(), "Deployment", "jobgate-gateway")["spec"]["template"]["spec"]["containers"][0][
            "args"
        ],
        "--port",
    )
)


def test_image_is_multi_stage_non_root_with_a_python_health_check() -> None:
    assert image_problems(DOCKERFILE, IGNORE, PORT) == []


def _runtime_stage_edit(old: str, new: str) -> str:
    head, sep, runtime = DOCKERFILE.rpartition("\nFROM ")
    assert sep and old in runtime
    return head + sep + runtime.replace(old, new)


BROKEN = {
    "root user": (
        _runtime_stage_edit("USER 10001:10001", "USER root"),
        "the runtime stage must switch to a fixed non-root numeric USER (runAsNonRoot verifies UIDs)",
    ),
    "compilers at run time": (
        _runtime_stage_edit(
            "COPY --from=builder", "RUN apt-get update && apt-get install -y gcc\nCOPY --from=builder"
        ),
        "the runtime stage installs build tools: RUN apt-get update && apt-get install -y gcc",
    ),
    "health check on another port": (
        _runtime_stage_edit("127.0.0.1:8080/healthz", "127.0.0.1:9000/healthz"),
        f"the image needs a HEALTHCHECK asking /healthz on port {PORT} with python",
    ),
    "serve on another port": (
        _runtime_stage_edit('"--port", "8080"', '"--port", "9000"'),
        f"the image's CMD must be serve --host 0.0.0.0 --port {PORT}",
    ),
    "a shell entrypoint": (
        _runtime_stage_edit('ENTRYPOINT ["jobgate"]', 'ENTRYPOINT ["sh", "-c"]'),
        'the image\'s ENTRYPOINT must be ["jobgate"]',
    ),
    "an old interpreter": (
        DOCKERFILE.replace("python:3.11-slim-bookworm", "python:3.10-slim-bookworm"),
        "the runtime stage must start from a slim Python 3.11+ image, not python:3.10-slim-bookworm",
    ),
}


@pytest.mark.parametrize("dockerfile,problem", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_dockerfile_is_reported(dockerfile: str, problem: str) -> None:
    assert problem in image_problems(dockerfile, IGNORE, PORT)


def test_a_build_context_carrying_the_development_keys_is_reported() -> None:
    assert image_problems(DOCKERFILE, IGNORE.replace(".jobgate\n", ""), PORT) == [
        "the build context must ignore .jobgate"
    ]


def test_a_single_stage_image_is_reported() -> None:
    single = DOCKERFILE.rpartition("\nFROM ")[0]
    assert image_problems(single, IGNORE, PORT) == [
        "the Dockerfile must have a builder stage and a runtime stage"
    ]
