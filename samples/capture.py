"""Capture the gateway-contract samples from a running gateway on the demo data.

    .venv/bin/python samples/capture.py

Starts `jobgate serve --demo` on the embedded default in a temporary directory, calls each
route as tenant `acme` with a development token, and writes the bodies next to this file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# file -> (method, path, body)
READS = {
    "orchestrator-sources.json": ("GET", "/jobengine/sources?limit=3", None),
    "orchestrator-quotas.json": ("GET", "/jobengine/quotas", None),
    "orchestrator-quota-summary.json": ("GET", "/jobengine/quotas/summary", None),
    "orchestrator-deadletter-stats.json": ("GET", "/jobengine/deadletter/stats", None),
    "orchestrator-deadletter-summary.json": ("GET", "/jobengine/deadletter/summary", None),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gateway() -> Iterator[tuple[str, dict[str, str]]]:
    """A `jobgate serve --demo` on the embedded default in a temporary directory: its base URL and
    the headers of tenant `acme` with a development token."""
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        env["JOBGATE_DATA_DIR"] = str(Path(folder) / ".jobgate")
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--demo", "--port", str(port)],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.2)
            token = subprocess.run(
                [sys.executable, "-m", "app.cli", "token", "--tenant", "acme"],
                env=env, cwd=ROOT, capture_output=True, text=True, check=True,
            ).stdout.strip()
            yield base, {
                "Authorization": f"Bearer {token}",
                "X-Stella-Tenant": "acme",
                "X-Stella-Operator-Reason": "capturing contract samples",
                "X-Stella-Trace-Id": "sample-capture-0001",
            }
        finally:
            server.terminate()
            server.wait(10)


def call(base: str, headers: dict[str, str], method: str, path: str, body: dict | None = None) -> httpx.Response:
    response = httpx.request(method, base + path, headers=headers, json=body, timeout=10)
    if response.status_code >= 400:
        raise SystemExit(f"{method} {path} answered {response.status_code}: {response.text}")
    return response


def write(name: str, response: httpx.Response) -> None:
    (HERE / name).write_text(json.dumps(response.json(), indent=2, ensure_ascii=False) + "\n")
    request = response.request
    print(f"{name}: {request.method} {request.url.raw_path.decode()} -> {response.status_code}")


def capture(samples: dict[str, tuple[str, str, dict | None]] = READS) -> None:
    with gateway() as (base, headers):
        for name, (method, path, body) in samples.items():
            write(name, call(base, headers, method, path, body))


if __name__ == "__main__":
    capture()
