"""Verification keys follow the identity provider (spec §10.6): a key removed from the provider's
JWKS stops verifying in every process within the refresh interval, a key added is accepted at
once, an unreachable provider is survived on the last good keys until the staleness limit and
then fails closed (503 ``keys_unavailable``, ``/readyz`` not ready), and a JWKS file is re-read
when it changes.

The provider is a real HTTP server of the test's own; the gateways are real processes (the
settings' shortest interval, 30 s) or in-process applications and key sets given shorter
intervals than the settings allow.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from app.security.keys import BACKOFF_MAX_SECONDS, MIN_REFRESH_SECONDS, KeySet, KeysUnavailable, max_age
from tests.conftest import GatewayProcess, free_port, serving
from tests.support.keys import public_jwk

SOURCES = "/jobengine/sources"
ALGORITHMS = ("ES256", "RS256", "EdDSA")


class JwksProvider:
    """An identity provider's JWKS endpoint: a document (and Cache-Control) per path, which the
    test changes; it can be stopped and started again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.documents: dict[str, list[dict[str, Any]]] = {}
        self.cache_control: dict[str, str] = {}
        self.requests: list[str] = []
        self.server: ThreadingHTTPServer | None = None

    def serve(self, path: str, *jwks: dict[str, Any], cache_control: str | None = None) -> str:
        self.documents[path] = [public_jwk(j) for j in jwks]
        if cache_control is not None:
            self.cache_control[path] = cache_control
        return self.url + path

    def start(self) -> JwksProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests.append(self.path)
                document = provider.documents.get(self.path)
                body = json.dumps({"keys": document}).encode() if document is not None else b"{}"
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if self.path in provider.cache_control:
                    self.send_header("Cache-Control", provider.cache_control[self.path])
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)  # SO_REUSEADDR: restartable
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Unreachable: connections are refused."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def provider() -> Iterator[JwksProvider]:
    server = JwksProvider().start()
    try:
        yield server
    finally:
        server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_key(kid: str) -> tuple[Any, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    return private, {**json.loads(ECAlgorithm.to_jwk(private)), "kid": kid, "alg": "ES256", "use": "sig"}


async def apoll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


def bearer(token: str, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant}


# --- the schedule, on an injected clock -------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("max-age=60", 60.0),
        ("public, max-age=3600, must-revalidate", 3600.0),
        ('max-age="45"', 45.0),
        ("no-cache", 0.0),
        ("no-store, max-age=600", 0.0),
        ("max-age=soon", None),
        ("s-maxage=60", None),
        (None, None),
    ],
)
def test_max_age_is_read_from_cache_control(header, expected):
    assert max_age(header) == expected


@pytest.mark.parametrize(
    ("cache_control", "refresh", "expected"),
    [
        (None, 300, 300),  # no max-age: the configured interval
        ("max-age=120", 300, 120),  # a shorter max-age is honoured
        ("max-age=3600", 300, 300),  # a longer one is bounded by the setting
        ("max-age=5", 300, MIN_REFRESH_SECONDS),  # below the floor: the floor
        ("no-cache", 300, MIN_REFRESH_SECONDS),
        ("max-age=0", 20, 20),  # an interval injected below the floor is not raised to it
    ],
)
async def test_the_next_refresh_follows_max_age_within_the_bounds(provider, keys, cache_control, refresh, expected):
    url = provider.serve("/jwks", keys.jwks["es-1"], cache_control=cache_control)
    clock = Clock()
    keyset = KeySet(ALGORITHMS, url=url, clock=clock, refresh_seconds=refresh)
    assert await keyset.refresh()
    assert keyset.next_refresh - clock.now == expected


async def test_the_interval_leaves_two_refreshes_in_the_staleness_window(provider, keys):
    url = provider.serve("/jwks", keys.jwks["es-1"])
    clock = Clock()
    keyset = KeySet(ALGORITHMS, url=url, clock=clock, refresh_seconds=86400, max_stale_seconds=86400)
    await keyset.refresh()
    assert keyset.next_refresh - clock.now == 43200


async def test_a_scheduled_refresh_runs_when_due_and_drops_a_removed_key_at_once(provider, keys):
    url = provider.serve("/jwks", keys.jwks["es-1"], keys.jwks["es-2"])
    clock = Clock()
    keyset = KeySet(ALGORITHMS, url=url, clock=clock, refresh_seconds=60)
    await keyset.refresh()
    provider.serve("/jwks", keys.jwks["es-2"])
    clock.now += 59
    assert not await keyset.refresh_if_due()
    assert keyset.loaded("es-1") is not None
    clock.now += 1
    assert await keyset.refresh_if_due()
    assert keyset.loaded("es-1") is None
    assert keyset.loaded("es-2") is not None
    assert len(provider.requests) == 2


async def test_an_unchanged_key_keeps_its_object_across_refreshes(provider, keys):
    """So tokens verified with it stay in the verifier's cache; a replaced key does not."""
    url = provider.serve("/jwks", keys.jwks["es-1"], keys.jwks["es-2"])
    keyset = KeySet(ALGORITHMS, url=url)
    await keyset.refresh()
    es1, es2 = keyset.loaded("es-1"), keyset.loaded("es-2")
    _, replacement = new_key("es-2")
    provider.serve("/jwks", keys.jwks["es-1"], replacement)
    await keyset.refresh()
    assert keyset.loaded("es-1") is es1
    assert keyset.loaded("es-2") is not es2


async def test_an_unreachable_provider_is_retried_with_backoff_then_the_keys_go_stale(provider, keys):
    url = provider.serve("/jwks", keys.jwks["es-1"])
    clock = Clock()
    keyset = KeySet(ALGORITHMS, url=url, clock=clock, refresh_seconds=300, max_stale_seconds=3600, jitter=lambda: 0.0)
    await keyset.refresh()
    fresh_at = clock.now
    provider.stop()
    delays = []
    while clock.now - fresh_at <= 3600:
        clock.now = keyset.next_refresh
        assert await keyset.refresh_if_due() is True
        delays.append(keyset.next_refresh - clock.now)
        if clock.now - fresh_at <= 3600:
            keyset.ensure_available()  # the last good set still verifies
            assert keyset.loaded("es-1") is not None
    assert delays[:8] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert max(delays) == BACKOFF_MAX_SECONDS
    assert not keyset.available()
    with pytest.raises(KeysUnavailable) as refused:
        keyset.ensure_available()
    assert 1 <= refused.value.retry_after <= BACKOFF_MAX_SECONDS

    provider.start()  # back: the next retry succeeds and the keys are current again
    clock.now = keyset.next_refresh
    assert await keyset.refresh_if_due()
    keyset.ensure_available()
    assert keyset.next_refresh - clock.now == 300


async def test_retries_are_spread_by_jitter_within_half_the_backoff(provider, keys):
    url = provider.serve("/jwks", keys.jwks["es-1"])
    provider.stop()
    clock = Clock()
    delays = []
    for share in (0.0, 0.5, 0.999):
        keyset = KeySet(ALGORITHMS, url=url, clock=clock, jitter=lambda share=share: share)
        for _ in range(3):  # 1, 2, 4 s before jitter
            clock.now = max(clock.now, keyset.next_refresh)
            assert await keyset.refresh_if_due() is True
        delays.append(keyset.next_refresh - clock.now)
    assert delays[0] == 4
    assert delays[1] == 3
    assert 2 < delays[2] < 2.01


async def test_a_key_set_that_never_loaded_is_unavailable(keys):
    keyset = KeySet(ALGORITHMS, url=f"http://127.0.0.1:{free_port()}/jwks", clock=Clock())
    assert not await keyset.refresh()
    assert not keyset.available()
    with pytest.raises(KeysUnavailable):
        keyset.ensure_available()


# --- files, with the scheduler running ---------------------------------------------------------------


def write_jwks(path: Path, *jwks: dict[str, Any]) -> None:
    path.write_text(json.dumps({"keys": [public_jwk(j) for j in jwks]}))


async def test_a_file_rotated_in_place_is_picked_up_on_schedule(tmp_path, keys):
    path = tmp_path / "jwks.json"
    write_jwks(path, keys.jwks["es-1"])
    keyset = KeySet(ALGORITHMS, file=path, refresh_seconds=0.2)  # shorter than the settings allow
    await keyset.start()
    try:
        assert keyset.loaded("es-1") is not None
        write_jwks(path, keys.jwks["es-2"])  # the same file, rewritten

        async def rotated() -> bool:
            return keyset.loaded("es-1") is None and keyset.loaded("es-2") is not None

        await apoll(rotated, 5, "the rewritten file was not picked up")
    finally:
        await keyset.stop()


async def test_a_mounted_secret_swapped_by_symlink_is_picked_up(tmp_path, keys):
    """How Kubernetes updates a mounted Secret or ConfigMap: a new directory, then the ``..data``
    symlink swapped atomically; the file path is a symlink through it."""
    for version, kid in (("v1", "es-1"), ("v2", "es-2")):
        (tmp_path / version).mkdir()
        write_jwks(tmp_path / version / "jwks.json", keys.jwks[kid])
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "jwks.json").symlink_to("..data/jwks.json")
    # Both versions written long ago: only the swap tells them apart.
    for version in ("v1", "v2"):
        os.utime(tmp_path / version / "jwks.json", (time.time() - 3600, time.time() - 3600))
    keyset = KeySet(ALGORITHMS, file=tmp_path / "jwks.json", refresh_seconds=0.2)
    await keyset.start()
    try:
        assert keyset.loaded("es-1") is not None
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

        async def swapped() -> bool:
            return keyset.loaded("es-1") is None and keyset.loaded("es-2") is not None

        await apoll(swapped, 5, "the swapped file was not picked up")
    finally:
        await keyset.stop()


async def test_a_file_that_disappears_keeps_the_last_keys_until_stale(tmp_path, keys):
    path = tmp_path / "jwks.json"
    write_jwks(path, keys.jwks["es-1"])
    clock = Clock()
    keyset = KeySet(ALGORITHMS, file=path, clock=clock, refresh_seconds=60, max_stale_seconds=120)
    await keyset.refresh()
    path.unlink()
    clock.now += 60
    assert await keyset.refresh_if_due()
    keyset.ensure_available()
    clock.now += 61
    assert not keyset.available()


# --- one gateway, in process: fail closed and recover --------------------------------------------------


def short_app(gateway_env: dict[str, str], url: str, **settings: Any):  # type: ignore[no-untyped-def]
    """A gateway whose key settings are shorter than the environment may ask for."""
    from app.server import create_app
    from app.settings import load_settings

    env = {k: v for k, v in gateway_env.items() if k != "JOBGATE_AUTH_JWKS_FILE"}
    return create_app(replace(load_settings({**env, "JOBGATE_AUTH_JWKS_URL": url}), **settings))


async def test_an_unreachable_provider_serves_the_last_keys_then_fails_closed_then_recovers(
    gateway_env, factory, keys, provider
):
    url = provider.serve("/jwks", keys.jwks["es-1"])
    app = short_app(gateway_env, url, jwks_refresh_seconds=1, jwks_max_stale_seconds=4)
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    async with serving(app) as client:
        assert (await client.get(SOURCES, headers=headers)).status_code == 200
        async def sample(name: str) -> float:
            lines = (await client.get("/metrics")).text.splitlines()
            return next((float(line.split()[-1]) for line in lines if line.startswith(name + " ")), 0.0)

        errors = 'jobgate_auth_jwks_refreshes_total{outcome="error"}'
        errors_before = await sample(errors)
        started = time.monotonic()  # the last good fetch was at most 1 s (the interval) before
        provider.stop()
        requests_before = len(provider.requests)

        async def failed_refresh() -> bool:
            return await sample(errors) > errors_before

        await apoll(failed_refresh, 3, "no refresh failed")
        served = await client.get(SOURCES, headers=headers)
        assert time.monotonic() - started < 4, "too slow to tell the last good keys from staleness"
        assert served.status_code == 200, served.text  # the last good set verifies

        async def closed() -> httpx.Response | None:
            response = await client.get(SOURCES, headers=headers)
            return response if response.status_code == 503 else None

        refused = await apoll(closed, 10, "the gateway did not fail closed")
        assert time.monotonic() - started >= 4 - 1
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "keys_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "keys unavailable" in ready.json()["detail"]
        assert await sample('jobgate_auth_jwks_age_seconds{source="url"}') > 4
        assert len(provider.requests) == requests_before  # nothing reached the stopped provider

        provider.start()

        async def recovered() -> bool:
            response = await client.get(SOURCES, headers=headers)
            return response.status_code == 200

        await apoll(recovered, 5, "the gateway did not recover")
        assert (await client.get("/readyz")).json()["keys"] == "ok"


# --- gateway processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_provider() -> Iterator[JwksProvider]:
    server = JwksProvider().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet(gateway_env: dict[str, str], keys: Any, module_provider: JwksProvider) -> Iterator[dict[str, Any]]:
    """Started together, so that their 30 s intervals and rate limits run down at the same time:
    two gateways refreshing every 30 s, and one on the default schedule for added keys."""
    env = {k: v for k, v in gateway_env.items() if k != "JOBGATE_AUTH_JWKS_FILE"}
    rotating = module_provider.serve("/rotating", keys.jwks["es-1"], keys.jwks["es-2"])
    adding = module_provider.serve("/adding", keys.jwks["es-1"])
    started = time.monotonic()
    gateways = {
        "rotating": [
            GatewayProcess(env, free_port(), JOBGATE_AUTH_JWKS_URL=rotating, JOBGATE_AUTH_JWKS_REFRESH_SECONDS="30")
            for _ in range(2)
        ],
        "adding": [GatewayProcess(env, free_port(), JOBGATE_AUTH_JWKS_URL=adding)],
    }
    try:
        for group in gateways.values():
            for gateway in group:
                gateway.wait_ready()
        yield {**gateways, "started": started}
    finally:
        for group in gateways.values():
            for gateway in group:
                gateway.stop()


async def status(gateway: GatewayProcess, headers: dict[str, str]) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(gateway.url + SOURCES, headers=headers)).status_code


async def metric(gateway: GatewayProcess, name: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(gateway.url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


async def test_a_key_removed_at_the_provider_is_refused_by_every_process_within_the_interval(
    fleet, factory, keys, module_provider
):
    tenant = await factory.tenant()
    old = bearer(keys.token(kid="es-1", tenant=tenant), tenant)
    current = bearer(keys.token(kid="es-2", tenant=tenant), tenant)
    gateways = fleet["rotating"]
    for gateway in gateways:
        assert await status(gateway, old) == await status(gateway, current) == 200
    module_provider.serve("/rotating", keys.jwks["es-2"])  # es-1 revoked
    removed = time.monotonic()
    for gateway in gateways:

        async def refused(g: GatewayProcess = gateway) -> bool:
            return await status(g, old) == 401

        await apoll(refused, 30 + 10, f"es-1 still verifies at {gateway.url}", interval=0.2)
    assert time.monotonic() - removed <= 30 + 10
    for gateway in gateways:
        assert await status(gateway, current) == 200  # the key that stayed still verifies
        assert "removed ['es-1']" in gateway.output()  # the change is logged, by kid
        assert await metric(gateway, 'jobgate_auth_jwks_keys{source="url"}') == 1
        assert await metric(gateway, 'jobgate_auth_jwks_age_seconds{source="url"}') < 30 + 10
        assert await metric(gateway, 'jobgate_auth_jwks_refreshes_total{outcome="changed"}') >= 2


async def test_a_key_added_at_the_provider_is_accepted_at_once(fleet, factory, keys, module_provider):
    """Without waiting for the schedule (43,200 s here): the first token naming the new key makes
    the process refetch, unless it fetched less than 30 s ago."""
    tenant = await factory.tenant()
    (gateway,) = fleet["adding"]
    module_provider.serve("/adding", keys.jwks["es-1"], keys.jwks["es-2"])
    added = bearer(keys.token(kid="es-2", tenant=tenant), tenant)

    async def accepted() -> bool:
        return await status(gateway, added) == 200

    await apoll(accepted, 30 + 10, "the added key was not accepted", interval=0.2)
    assert "added ['es-2']" in gateway.output()


async def test_a_gateway_started_while_the_provider_is_unreachable_is_unready_until_it_answers(
    gateway_env, factory, keys
):
    """Two server processes (``--workers 2``): the key metrics are summed up the multi-process way,
    and the fewest keys loaded by any process tells when both have their keys."""
    provider = JwksProvider()  # not started yet: its port refuses connections
    env = {k: v for k, v in gateway_env.items() if k != "JOBGATE_AUTH_JWKS_FILE"}
    url = provider.serve("/jwks", keys.jwks["es-1"])
    gateway = GatewayProcess(env, free_port(), "--workers", "2", JOBGATE_AUTH_JWKS_URL=url)
    try:
        gateway.wait_ready()  # alive: /healthz answers
        tenant = await factory.tenant()
        headers = bearer(keys.token(kid="es-1", tenant=tenant), tenant)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            refused = await client.get(SOURCES, headers=headers)
            assert refused.status_code == 503
            assert refused.json()["code"] == "keys_unavailable"
            assert int(refused.headers["retry-after"]) >= 1
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and "keys unavailable" in ready.json()["detail"]
            assert await metric(gateway, 'jobgate_auth_jwks_keys{source="url"}') == 0
            assert await metric(gateway, 'jobgate_auth_jwks_age_seconds{source="url"}') > 10**9  # never fetched
            provider.start()

            async def both_loaded() -> bool:
                return await metric(gateway, 'jobgate_auth_jwks_keys{source="url"}') == 1

            await apoll(both_loaded, 30, "the processes did not load the keys once the provider answered", 0.2)
            assert await metric(gateway, 'jobgate_auth_jwks_age_seconds{source="url"}') < 30
            for _ in range(10):  # whichever process answers
                assert (await client.get("/readyz")).status_code == 200
                assert (await client.get(SOURCES, headers=headers)).status_code == 200
    finally:
        gateway.stop()
        provider.stop()
