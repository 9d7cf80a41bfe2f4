"""Access tokens (spec §3, RFC 8725, RFC 6750): what the gateway accepts and what it refuses.

Every refusal is a 401 problem+json with ``WWW-Authenticate``; none is ever a 500 and none makes
the gateway fetch anything a token names.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from app.security.keys import REFETCH_INTERVAL, KeySet
from tests.conftest import make_app, serving
from tests.support.keys import public_jwk

SOURCES = "/jobengine/sources"
ALGORITHMS = ("ES256", "RS256", "EdDSA")


# --- helpers ----------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HMAC token built by hand (PyJWT refuses to use a public key as an HMAC secret)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def es256(claims: dict[str, Any], keys: Any, kid: str = "es-1") -> str:
    """A token whose claims PyJWT's encoder would refuse (for example a non-string ``iss``)."""
    return jwt.PyJWS().encode(json.dumps(claims).encode(), keys.private[kid], algorithm="ES256", headers={"kid": kid})


def bearer(token: str, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Stella-Tenant": tenant}


def assert_invalid_token(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def outsider_jwk(keys: Any, kid: str) -> dict[str, Any]:
    jwk = json.loads(ECAlgorithm.to_jwk(keys.outsider.public_key()))
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def self_signed_certificate(private: Any) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )


class Recorder:
    """A local HTTP server that records every request and answers ``status`` with ``body``."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.status = 200
        self.body = b'{"keys": []}'
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append(self.path)
                self.send_response(recorder.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(recorder.body)))
                self.end_headers()
                self.wfile.write(recorder.body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    try:
        yield server
    finally:
        server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_jwks(path: Path, keys: Any, *kids: str) -> None:
    path.write_text(json.dumps({"keys": [public_jwk(keys.jwks[kid]) for kid in kids]}))


# --- keys that verify -------------------------------------------------------------------------


async def test_tokens_of_both_rotating_keys_verify(client, factory, keys):
    tenant = await factory.tenant()
    for kid in ("es-1", "es-2"):
        response = await client.get(SOURCES, headers=bearer(keys.token(kid=kid, tenant=tenant), tenant))
        assert response.status_code == 200, (kid, response.text)


@pytest.mark.parametrize("kid", ["rsa-1", "ed-1"])
async def test_rsa_and_eddsa_keys_verify(client, factory, keys, kid):
    tenant = await factory.tenant()
    response = await client.get(SOURCES, headers=bearer(keys.token(kid=kid, tenant=tenant), tenant))
    assert response.status_code == 200, response.text


# --- algorithms -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_unsigned_token_is_refused(client, factory, keys, alg):
    tenant = await factory.tenant()
    token = f"{segment({'alg': alg, 'kid': 'es-1', 'typ': 'JWT'})}.{segment(keys.claims(tenant=tenant))}."
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


@pytest.mark.parametrize("kid", ["es-1", "rsa-1"])
@pytest.mark.parametrize("form", ["pem", "jwk"])
async def test_hs256_signed_with_the_public_key_is_refused(client, factory, keys, kid, form):
    tenant = await factory.tenant()
    public = keys.private[kid].public_key()
    if form == "pem":
        secret = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    else:
        secret = json.dumps(public_jwk(keys.jwks[kid])).encode()
    token = hs256({"alg": "HS256", "kid": kid, "typ": "JWT"}, keys.claims(tenant=tenant), secret)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


@pytest.mark.parametrize(
    ("alg", "kid", "key"),
    [
        ("PS256", "rsa-1", "rsa-1"),  # a JWKS key with a correct signature, but an algorithm not allowed
        ("RS384", "rsa-1", "rsa-1"),
        ("ES384", "es-1", "p-384"),
    ],
)
async def test_algorithm_outside_the_allow_list_is_refused(client, factory, keys, alg, kid, key):
    tenant = await factory.tenant()
    signing_key = ec.generate_private_key(ec.SECP384R1()) if key == "p-384" else keys.private[key]
    token = keys.token(kid=kid, alg=alg, key=signing_key, tenant=tenant)
    assert jwt.get_unverified_header(token)["alg"] == alg
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


@pytest.mark.parametrize(("alg", "kid", "key"), [("RS256", "es-1", "rsa-1"), ("ES256", "ed-1", "es-1"),
                                                ("EdDSA", "rsa-1", "ed-1")])
async def test_algorithm_other_than_the_keys_is_refused(client, factory, keys, alg, kid, key):
    tenant = await factory.tenant()
    token = keys.token(kid=kid, alg=alg, key=keys.private[key], tenant=tenant)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


# --- key selection ----------------------------------------------------------------------------


async def test_unknown_kids_cause_at_most_one_jwks_refetch(gateway_env, factory, keys, recorder):
    recorder.body = keys.jwks_path.read_bytes()
    app = make_app(gateway_env, JOBGATE_AUTH_JWKS_FILE=None, JOBGATE_AUTH_JWKS_URL=f"{recorder.url}/jwks.json")
    tenant = await factory.tenant()
    async with serving(app) as client:
        runtime = app.state.runtime
        known = await client.get(SOURCES, headers=bearer(keys.token(tenant=tenant), tenant))
        assert known.status_code == 200, known.text
        responses = await asyncio.gather(
            *(
                client.get(SOURCES, headers=bearer(keys.token(kid=secrets.token_hex(8), key=keys.private["es-1"],
                                                              tenant=tenant), tenant))
                for _ in range(100)
            )
        )
        for response in responses:
            assert_invalid_token(response)
        assert 1 <= runtime.keys.fetches <= 2
        assert 1 <= len(recorder.requests) <= 2


@pytest.mark.parametrize("crit", [["exp"], ["x-stella-custom"]])
async def test_crit_header_is_refused(client, factory, keys, crit):
    tenant = await factory.tenant()
    headers = {"crit": crit, **{name: True for name in crit if name != "exp"}}
    token = keys.token(headers=headers, tenant=tenant)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


@pytest.mark.parametrize("header", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["attacker", "es-1"])
async def test_key_url_headers_are_not_followed(client, factory, keys, recorder, header, kid):
    if header == "jku":
        recorder.body = json.dumps({"keys": [outsider_jwk(keys, kid)]}).encode()
    else:
        recorder.body = self_signed_certificate(keys.outsider).public_bytes(serialization.Encoding.PEM)
    tenant = await factory.tenant()
    token = keys.token(kid=kid, alg="ES256", key=keys.outsider, headers={header: f"{recorder.url}/keys"},
                       tenant=tenant)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))
    assert recorder.requests == []


@pytest.mark.parametrize("kid", ["attacker", "es-1"])
async def test_embedded_jwk_header_is_not_trusted(client, factory, keys, kid):
    tenant = await factory.tenant()
    token = keys.token(kid=kid, alg="ES256", key=keys.outsider, headers={"jwk": outsider_jwk(keys, kid)},
                       tenant=tenant)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


@pytest.mark.parametrize("kid", ["attacker", "es-1"])
async def test_embedded_x5c_header_is_not_trusted(client, factory, keys, kid):
    tenant = await factory.tenant()
    der = self_signed_certificate(keys.outsider).public_bytes(serialization.Encoding.DER)
    token = keys.token(kid=kid, alg="ES256", key=keys.outsider, headers={"x5c": [base64.b64encode(der).decode()]},
                       tenant=tenant)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


# --- claims -----------------------------------------------------------------------------------


async def test_token_without_exp_is_refused(client, factory, keys):
    tenant = await factory.tenant()
    assert_invalid_token(await client.get(SOURCES, headers=bearer(keys.token(exp=None, tenant=tenant), tenant)))


async def test_token_expired_just_beyond_the_leeway_is_refused(client, factory, keys):
    tenant = await factory.tenant()
    now = int(time.time())
    token = keys.token(iat=now - 600, nbf=now - 600, exp=now - 65, tenant=tenant)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


async def test_token_expired_within_the_leeway_is_accepted(client, factory, keys):
    tenant = await factory.tenant()
    now = int(time.time())
    token = keys.token(iat=now - 600, nbf=now - 600, exp=now - 50, tenant=tenant)
    response = await client.get(SOURCES, headers=bearer(token, tenant))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_token_from_the_future_beyond_the_leeway_is_refused(client, factory, keys, claim):
    tenant = await factory.tenant()
    token = keys.token(**{claim: int(time.time()) + 120}, tenant=tenant)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


async def test_token_from_the_future_within_the_leeway_is_accepted(client, factory, keys):
    tenant = await factory.tenant()
    soon = int(time.time()) + 30
    response = await client.get(SOURCES, headers=bearer(keys.token(nbf=soon, iat=soon, tenant=tenant), tenant))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "issuer",
    [
        lambda i: "https://evil.test",
        lambda i: i[:-1],
        lambda i: i + "x",
        lambda i: i + "/",
        lambda i: i.upper(),
        lambda i: [i],
    ],
    ids=["foreign", "prefix", "extended", "trailing-slash", "upper-case", "list"],
)
async def test_wrong_or_substring_issuer_is_refused(client, factory, keys, issuer):
    tenant = await factory.tenant()
    token = es256(keys.claims(iss=issuer(keys.issuer), tenant=tenant), keys)
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


async def test_exact_issuer_and_audience_are_accepted(client, factory, keys):
    tenant = await factory.tenant()
    token = es256(keys.claims(iss=keys.issuer, aud=[keys.audience], tenant=tenant), keys)
    response = await client.get(SOURCES, headers=bearer(token, tenant))
    assert response.status_code == 200, response.text


async def test_token_without_issuer_is_refused(client, factory, keys):
    tenant = await factory.tenant()
    assert_invalid_token(await client.get(SOURCES, headers=bearer(keys.token(iss=None, tenant=tenant), tenant)))


@pytest.mark.parametrize(
    "audience",
    [None, "", [], "foreign", ["foreign"], lambda a: a[:-1], lambda a: a + "x"],
    ids=["missing", "empty-string", "empty-list", "foreign", "foreign-list", "prefix", "extended"],
)
async def test_missing_empty_or_foreign_audience_is_refused(client, factory, keys, audience):
    tenant = await factory.tenant()
    value = audience(keys.audience) if callable(audience) else audience
    token = keys.token(tenant=tenant, **({"aud": None} if value is None else {"aud": value}))
    if value is None:
        assert "aud" not in jwt.decode(token, options={"verify_signature": False})
    assert_invalid_token(await client.get(SOURCES, headers=bearer(token, tenant)))


# --- malformed tokens -------------------------------------------------------------------------


def _malformed(keys: Any) -> dict[str, str]:
    good = keys.token()
    head, body, signature = good.split(".")
    nested = '{"alg":"ES256","kid":"es-1","x":' + "[" * 2500 + "]" * 2500 + "}"
    return {
        "two-segments": f"{head}.{body}",
        "four-segments": f"{good}.{signature}",
        "five-segments": f"{good}.{signature}.{signature}",
        "empty-segments": "..",
        "bad-base64url": f"{head}.{body}!*$.{signature}",
        "bad-base64url-header": f"%%%{head[3:]}.{body}.{signature}",
        "header-not-json": f"{b64url(b'not json')}.{body}.{signature}",
        "header-not-object": f"{segment(['ES256'])}.{body}.{signature}",
        "payload-not-json": f"{head}.{b64url(b'not json')}.{signature}",
        "64kB-header": f"{segment({'alg': 'ES256', 'kid': 'es-1', 'pad': 'A' * 65536})}.{body}.{signature}",
        "nested-header": f"{b64url(nested.encode())}.{body}.{signature}",
        "non-ascii": f"{head}.{body}.{signature[:-2]}é€",
    }


@pytest.mark.parametrize(
    "shape",
    ["two-segments", "four-segments", "five-segments", "empty-segments", "bad-base64url", "bad-base64url-header",
     "header-not-json", "header-not-object", "payload-not-json", "64kB-header", "nested-header", "non-ascii"],
)
async def test_malformed_token_is_a_fast_401(client, keys, shape):
    token = _malformed(keys)[shape]
    started = time.perf_counter()
    response = await client.get(SOURCES, headers={"Authorization": f"Bearer {token}".encode(),
                                                  "X-Stella-Tenant": "acme"})
    elapsed = time.perf_counter() - started
    assert_invalid_token(response)
    assert elapsed < 2.0


# --- challenges (RFC 6750 §3) -----------------------------------------------------------------


async def test_request_without_credentials_gets_a_challenge_without_error(client, factory):
    tenant = await factory.tenant()
    response = await client.get(SOURCES, headers={"X-Stella-Tenant": tenant})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert "error=" not in challenge


async def test_bad_token_gets_an_invalid_token_challenge(client, factory, keys):
    tenant = await factory.tenant()
    token = keys.token(key=keys.outsider, tenant=tenant)
    response = await client.get(SOURCES, headers=bearer(token, tenant))
    assert_invalid_token(response)
    assert response.headers["www-authenticate"].startswith("Bearer ")


async def test_missing_scope_gets_an_insufficient_scope_challenge(client, factory):
    tenant = await factory.tenant()
    response = await client.get(SOURCES, headers=factory.headers(tenant, scope="orch:quota"))
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="orch:read"' in challenge


# --- the key set ------------------------------------------------------------------------------


async def _loaded(path: Path, keys: Any, clock: Clock) -> KeySet:
    write_jwks(path, keys, "es-1")
    keyset = KeySet(ALGORITHMS, file=path, clock=clock)
    await keyset.refresh()
    assert await keyset.get("es-1") is not None
    return keyset


@pytest.mark.parametrize(
    "broken", ["deleted", "garbage", "null", "no-keys-member", "keys-not-a-list", "key-not-an-object", "truncated"]
)
async def test_key_set_keeps_the_last_good_keys_when_the_file_breaks(tmp_path, keys, broken):
    path, clock = tmp_path / "jwks.json", Clock()
    keyset = await _loaded(path, keys, clock)
    if broken == "deleted":
        path.unlink()
    else:
        path.write_text({"garbage": "\x00 not json", "null": "null", "no-keys-member": '{"error": "unavailable"}',
                         "keys-not-a-list": '{"keys": 5}', "key-not-an-object": '{"keys": [5]}',
                         "truncated": path.read_text()[:40]}[broken])
    clock.now += REFETCH_INTERVAL
    await keyset.refresh()
    assert keyset.fetches == 2
    assert await keyset.get("es-1") is not None


async def test_key_set_keeps_the_last_good_keys_when_the_url_starts_failing(keys, recorder):
    recorder.body = json.dumps({"keys": [public_jwk(keys.jwks["es-1"])]}).encode()
    clock = Clock()
    keyset = KeySet(ALGORITHMS, url=f"{recorder.url}/jwks.json", clock=clock)
    await keyset.refresh()
    assert await keyset.get("es-1") is not None
    for status, body in [(500, b"{}"), (200, b"<html>not json</html>")]:
        recorder.status, recorder.body = status, body
        clock.now += REFETCH_INTERVAL
        assert await keyset.get("unknown-kid") is None  # an unknown kid triggers the failing refetch
        assert await keyset.get("es-1") is not None
    assert len(recorder.requests) == 3


async def test_unknown_kid_refetches_and_picks_up_a_newly_added_key(tmp_path, keys):
    path, clock = tmp_path / "jwks.json", Clock()
    keyset = await _loaded(path, keys, clock)
    write_jwks(path, keys, "es-1", "es-2")
    clock.now += REFETCH_INTERVAL
    assert await keyset.get("es-2") is not None
    assert keyset.fetches == 2


async def test_unknown_kid_does_not_refetch_within_the_interval(tmp_path, keys):
    path, clock = tmp_path / "jwks.json", Clock()
    keyset = await _loaded(path, keys, clock)
    write_jwks(path, keys, "es-1", "es-2")
    clock.now += REFETCH_INTERVAL - 1
    assert await keyset.get("es-2") is None
    assert keyset.fetches == 1


async def test_concurrent_unknown_kids_share_one_refetch(tmp_path, keys):
    path, clock = tmp_path / "jwks.json", Clock()
    keyset = await _loaded(path, keys, clock)
    clock.now += REFETCH_INTERVAL
    found = await asyncio.gather(*(keyset.get(secrets.token_hex(8)) for _ in range(100)))
    assert found == [None] * 100
    assert keyset.fetches == 2


async def test_key_set_never_loads_private_encryption_or_disallowed_keys(tmp_path, keys):
    path = tmp_path / "jwks.json"
    hmac_key = {"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64url(b"s" * 32)}
    encryption = {**public_jwk(keys.jwks["es-2"]), "kid": "enc", "use": "enc"}
    path.write_text(json.dumps({"keys": [keys.jwks["es-1"], hmac_key, encryption, public_jwk(keys.jwks["rsa-1"])]}))
    keyset = KeySet(("ES256",), file=path)
    await keyset.refresh()
    for kid in ("es-1", "hs", "enc", "rsa-1"):
        assert await keyset.get(kid) is None, kid


# --- the cache of verified tokens -------------------------------------------------------------------


async def test_a_cached_token_is_refused_once_it_expires(keys):
    from app.security.tokens import AuthError, TokenVerifier

    now = [time.time()]
    key_set = KeySet(("ES256",), file=keys.jwks_path)
    await key_set.refresh()
    verifier = TokenVerifier(key_set, issuer=keys.issuer, audience=keys.audience, clock=lambda: now[0])
    token = keys.token(exp=int(now[0]) + 120)
    assert (await verifier.verify(token)).subject == "tester"
    assert (await verifier.verify(token)).subject == "tester"  # answered from the cache
    now[0] += 120 + 61  # past exp and the 60 s leeway
    with pytest.raises(AuthError):
        await verifier.verify(token)


async def test_a_cached_token_is_refused_once_its_key_is_rotated_out(keys, tmp_path):
    from app.security.tokens import AuthError, TokenVerifier

    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(keys.jwks["es-1"]), public_jwk(keys.jwks["es-2"])]}))
    key_set = KeySet(("ES256",), file=jwks)
    await key_set.refresh()
    verifier = TokenVerifier(key_set, issuer=keys.issuer, audience=keys.audience)
    token = keys.token(kid="es-1")
    assert (await verifier.verify(token)).subject == "tester"
    jwks.write_text(json.dumps({"keys": [public_jwk(keys.jwks["es-2"])]}))
    await key_set.refresh()
    with pytest.raises(AuthError):
        await verifier.verify(token)
