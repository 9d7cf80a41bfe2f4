"""DPoP (RFC 9449): proofs bound to the request, the access token and its key, used once across
every gateway process; the ``JOBGATE_AUTH_DPOP`` modes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio

from app.security.dpop import access_token_hash, normalise_htu
from app.security.tokens import AuthError
from tests.conftest import GatewayProcess, free_port, make_app, serving
from tests.support.keys import DPoPKey

SOURCES = "/jobengine/sources"
HTU = "http://gateway.test" + SOURCES
SHARED_PUBLIC_URL = "http://gateway.shared"


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def dpop_key() -> DPoPKey:
    return DPoPKey.generate()


def bound_token(keys: Any, tenant: str, dpop_key: DPoPKey, **claims: Any) -> str:
    return keys.token(tenant=tenant, cnf={"jkt": dpop_key.thumbprint}, **claims)


def dpop_headers(token: str, proof: str | None, tenant: str) -> dict[str, str]:
    headers = {"Authorization": f"DPoP {token}", "X-Stella-Tenant": tenant}
    if proof is not None:
        headers["DPoP"] = proof
    return headers


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    encode = lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{encode(header)}.{encode(claims)}."


def proof_claims(token: str, **overrides: Any) -> dict[str, Any]:
    claims = {"htm": "GET", "htu": HTU, "iat": int(time.time()), "jti": uuid.uuid4().hex,
              "ath": access_token_hash(token)}
    claims.update(overrides)
    return claims


def assert_invalid_proof(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_dpop_proof"
    challenge = response.headers["www-authenticate"]
    assert "DPoP " in challenge
    assert 'error="invalid_dpop_proof"' in challenge


async def get_with_proof(client: Any, keys: Any, factory: Any, dpop_key: DPoPKey, **proof_options: Any):
    """GET the sources with a token bound to ``dpop_key`` and a proof built from ``proof_options``."""
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    method = proof_options.pop("method", "GET")
    url = proof_options.pop("url", HTU)
    path = proof_options.pop("path", SOURCES)
    proof = dpop_key.proof(method, url, token, **proof_options)
    return await client.get(path, headers=dpop_headers(token, proof, tenant))


# --- accepted proofs --------------------------------------------------------------------------


async def test_valid_proof_is_accepted(client, factory, keys, dpop_key):
    response = await get_with_proof(client, keys, factory, dpop_key)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "url",
    [
        "HTTP://GATEWAY.TEST/jobengine/sources",
        "http://gateway.test:80/jobengine/sources",
        "Http://Gateway.Test:80/jobengine/sources",
        "http://gateway.test/jobengine/sources?limit=5",
        "http://gateway.test/jobengine/sources#fragment",
        "http://gateway.test/jobengine/%73ources",
    ],
    ids=["upper-case", "default-port", "mixed-case-default-port", "query", "fragment", "percent-encoded"],
)
async def test_normalised_equal_htu_is_accepted(client, factory, keys, dpop_key, url):
    response = await get_with_proof(client, keys, factory, dpop_key, url=url)
    assert response.status_code == 200, response.text


async def test_query_of_the_request_is_not_part_of_htu(client, factory, keys, dpop_key):
    response = await get_with_proof(client, keys, factory, dpop_key, path=SOURCES + "?limit=5")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("age", [-30, 200], ids=["slightly-ahead", "a-few-minutes-old"])
async def test_proof_iat_inside_the_window_is_accepted(client, factory, keys, dpop_key, age):
    response = await get_with_proof(client, keys, factory, dpop_key, iat=time.time() - age)
    assert response.status_code == 200, response.text


# --- refused proofs ---------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "jwt", "DPoP+JWT", "at+jwt"])
async def test_proof_with_wrong_typ_is_refused(client, factory, keys, dpop_key, typ):
    assert_invalid_proof(await get_with_proof(client, keys, factory, dpop_key, typ=typ))


async def test_proof_signed_with_hs256_is_refused(client, factory, keys, dpop_key):
    assert_invalid_proof(await get_with_proof(client, keys, factory, dpop_key, alg="HS256", key=b"s" * 32))


@pytest.mark.parametrize("alg", ["none", "None"])
async def test_unsigned_proof_is_refused(client, factory, keys, dpop_key, alg):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    proof = unsigned({"typ": "dpop+jwt", "alg": alg, "jwk": {k: v for k, v in dpop_key.jwk.items() if k != "d"}},
                     proof_claims(token))
    assert_invalid_proof(await client.get(SOURCES, headers=dpop_headers(token, proof, tenant)))


@pytest.mark.parametrize("method", ["POST", "get", "HEAD"])
async def test_proof_with_wrong_htm_is_refused(client, factory, keys, dpop_key, method):
    assert_invalid_proof(await get_with_proof(client, keys, factory, dpop_key, method=method))


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.test/jobengine/sources",
        "https://gateway.test/jobengine/sources",
        "http://gateway.test:8080/jobengine/sources",
        "http://gateway.test/jobengine/sources/",
        "http://gateway.test/jobengine/sources/other",
        "http://gateway.test/jobengine/SOURCES",
        "http://gateway.test/jobengine",
        "http://user@gateway.test/jobengine/sources",
        "/jobengine/sources",
        "http://gateway.test:99999/jobengine/sources",
    ],
    ids=["host", "scheme", "port", "trailing-slash", "longer-path", "path-case", "shorter-path", "userinfo",
         "relative", "invalid-port"],
)
async def test_proof_with_wrong_htu_is_refused(client, factory, keys, dpop_key, url):
    assert_invalid_proof(await get_with_proof(client, keys, factory, dpop_key, url=url))


@pytest.mark.parametrize("age", [400, -120], ids=["too-old", "too-far-ahead"])
async def test_proof_iat_outside_the_window_is_refused(client, factory, keys, dpop_key, age):
    assert_invalid_proof(await get_with_proof(client, keys, factory, dpop_key, iat=time.time() - age))


@pytest.mark.parametrize("ath", [None, "other-token", "padded"], ids=["missing", "other-token", "padded"])
async def test_proof_without_or_with_wrong_ath_is_refused(client, factory, keys, dpop_key, ath):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    value = {None: None, "other-token": access_token_hash(keys.token()), "padded": access_token_hash(token) + "="}[ath]
    proof = dpop_key.proof("GET", HTU, token, ath=value)
    if ath is None:
        assert "ath" not in jwt.decode(proof, options={"verify_signature": False})
    assert_invalid_proof(await client.get(SOURCES, headers=dpop_headers(token, proof, tenant)))


async def test_proof_by_another_key_than_the_token_binding_is_refused(client, factory, keys, dpop_key):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    proof = DPoPKey.generate().proof("GET", HTU, token)
    assert_invalid_proof(await client.get(SOURCES, headers=dpop_headers(token, proof, tenant)))


async def test_proof_signed_by_another_key_than_its_jwk_is_refused(client, factory, keys, dpop_key):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    proof = dpop_key.proof("GET", HTU, token, key=DPoPKey.generate().private)
    assert_invalid_proof(await client.get(SOURCES, headers=dpop_headers(token, proof, tenant)))


async def test_proof_jwk_with_a_private_part_is_refused(client, factory, keys, dpop_key):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    assert "d" in dpop_key.jwk
    proof = jwt.encode(proof_claims(token), dpop_key.private, algorithm="ES256",
                       headers={"typ": "dpop+jwt", "jwk": dpop_key.jwk})
    assert_invalid_proof(await client.get(SOURCES, headers=dpop_headers(token, proof, tenant)))


@pytest.mark.parametrize("shape", ["two-segments", "garbage", "non-ascii", "oversized"])
async def test_malformed_proof_is_refused(client, factory, keys, dpop_key, shape):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    good = dpop_key.proof("GET", HTU, token)
    proof = {
        "two-segments": good.rsplit(".", 1)[0],
        "garbage": "!!!.???.***",
        "non-ascii": good[:-4] + "\u00e9\u00e9\u00e9\u00e9",
        "oversized": good + "A" * 9000,
    }[shape]
    headers = {"Authorization": f"DPoP {token}", "X-Stella-Tenant": tenant, "DPoP": proof.encode("utf-8")}
    assert_invalid_proof(await client.get(SOURCES, headers=headers))


async def test_proof_for_a_token_without_binding_is_refused(client, factory, keys, dpop_key):
    tenant = await factory.tenant()
    token = keys.token(tenant=tenant)
    proof = dpop_key.proof("GET", HTU, token)
    assert_invalid_proof(await client.get(SOURCES, headers=dpop_headers(token, proof, tenant)))


async def test_dpop_scheme_without_exactly_one_proof_is_refused(client, factory, keys, dpop_key):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    assert_invalid_proof(await client.get(SOURCES, headers=dpop_headers(token, None, tenant)))
    two = [("Authorization", f"DPoP {token}"), ("X-Stella-Tenant", tenant),
           ("DPoP", dpop_key.proof("GET", HTU, token)), ("DPoP", dpop_key.proof("GET", HTU, token))]
    assert_invalid_proof(await client.get(SOURCES, headers=two))


async def test_dpop_bound_token_sent_as_bearer_is_refused(client, factory, keys, dpop_key):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    response = await client.get(SOURCES, headers={"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "www-authenticate" in response.headers


async def test_replayed_proof_is_refused(client, factory, keys, dpop_key):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    headers = dpop_headers(token, dpop_key.proof("GET", HTU, token), tenant)
    first = await client.get(SOURCES, headers=headers)
    assert first.status_code == 200, first.text
    assert_invalid_proof(await client.get(SOURCES, headers=headers))


# --- one proof, two processes -----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_gateways(gateway_env: dict[str, str]) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes behind one public URL, so that one proof's ``htu`` fits both."""
    gateways = [GatewayProcess(gateway_env, free_port(), public_url=SHARED_PUBLIC_URL) for _ in range(2)]
    try:
        for gateway in gateways:
            gateway.wait_ready()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


async def test_concurrent_copies_of_one_proof_succeed_once_across_processes(
    shared_gateways, factory, keys, dpop_key
):
    tenant = await factory.tenant()
    token = bound_token(keys, tenant, dpop_key)
    headers = dpop_headers(token, dpop_key.proof("GET", SHARED_PUBLIC_URL + SOURCES, token), tenant)
    async with httpx.AsyncClient(timeout=10) as http:
        # Each process first accepts a fresh proof of its own: both check this htu.
        for gateway in shared_gateways:
            fresh = dpop_headers(token, dpop_key.proof("GET", SHARED_PUBLIC_URL + SOURCES, token), tenant)
            accepted = await http.get(gateway.url + SOURCES, headers=fresh)
            assert accepted.status_code == 200, accepted.text
        responses = await asyncio.gather(
            *(http.get(shared_gateways[i % 2].url + SOURCES, headers=headers) for i in range(20))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [401] * 19
    for response in responses:
        if response.status_code == 401:
            assert_invalid_proof(response)


# --- modes ------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def required_client(gateway_env) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(make_app(gateway_env, JOBGATE_AUTH_DPOP="required")) as test_client:
        yield test_client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def off_client(gateway_env) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(make_app(gateway_env, JOBGATE_AUTH_DPOP="off")) as test_client:
        yield test_client


async def test_required_mode_refuses_a_plain_bearer_token(required_client, factory, keys):
    tenant = await factory.tenant()
    response = await required_client.get(SOURCES, headers=factory.headers(tenant))
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("DPoP ")


async def test_required_mode_accepts_a_valid_proof(required_client, factory, keys, dpop_key):
    response = await get_with_proof(required_client, keys, factory, dpop_key)
    assert response.status_code == 200, response.text


async def test_off_mode_refuses_the_dpop_scheme(off_client, factory, keys, dpop_key):
    response = await get_with_proof(off_client, keys, factory, dpop_key)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert "algs=" not in challenge  # no DPoP challenge is offered


async def test_off_mode_accepts_a_plain_bearer_token(off_client, factory):
    tenant = await factory.tenant()
    response = await off_client.get(SOURCES, headers=factory.headers(tenant))
    assert response.status_code == 200, response.text


# --- htu normal form --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("http://gateway.test/jobengine/sources", "http://gateway.test/jobengine/sources"),
        ("HTTP://GATEWAY.TEST/jobengine/sources", "http://gateway.test/jobengine/sources"),
        ("http://gateway.test:80/a", "http://gateway.test/a"),
        ("https://gateway.test:443/a", "https://gateway.test/a"),
        ("http://gateway.test:/a", "http://gateway.test/a"),
        ("https://gateway.test:80/a", "https://gateway.test:80/a"),
        ("http://gateway.test:8443/a", "http://gateway.test:8443/a"),
        ("http://gateway.test", "http://gateway.test/"),
        ("http://gateway.test/a?b=c#d", "http://gateway.test/a"),
        ("http://gateway.test/A/b", "http://gateway.test/A/b"),
        ("http://gateway.test/%7euser/%2fx", "http://gateway.test/~user/%2Fx"),
        ("http://gateway.test/a/./b/../c", "http://gateway.test/a/c"),
        ("http://gateway.test/a/..", "http://gateway.test/"),
        ("http://gateway.test/../a", "http://gateway.test/a"),
        ("http://[::1]:8080/a", "http://[::1]:8080/a"),
        ("http://[::1]:80/a", "http://[::1]/a"),
    ],
)
def test_normalise_htu(url, normal):
    assert normalise_htu(url) == normal


@pytest.mark.parametrize("url", ["http://gateway.test:99999/a", "http://gateway.test:port/a",
                                 "http://user:pass@gateway.test/a", "http://user@gateway.test/a"])
def test_normalise_htu_refuses_invalid_urls(url):
    with pytest.raises(AuthError):
        normalise_htu(url)
