"""Signing keys and token/proof builders for the tests (never used by the product)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from app.security.dpop import access_token_hash
from app.security.keys import jwk_thumbprint


def _jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    if isinstance(private, rsa.RSAPrivateKey):
        data = json.loads(RSAAlgorithm.to_jwk(private))
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        data = json.loads(OKPAlgorithm.to_jwk(private))
    else:
        data = json.loads(ECAlgorithm.to_jwk(private))
    data.update(kid=kid, alg=alg, use="sig")
    return data


def public_jwk(jwk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}


@dataclass
class TestKeys:
    jwks_path: Path
    private: dict[str, Any]  # kid -> private key object
    jwks: dict[str, dict[str, Any]]  # kid -> private JWK
    issuer: str = "https://issuer.test"
    audience: str = "stella-jobengine-test"
    outsider: Any = field(default=None)  # a key that is not in the JWKS

    __test__ = False

    @classmethod
    def generate(cls, folder: Path) -> TestKeys:
        private = {
            "es-1": ec.generate_private_key(ec.SECP256R1()),
            "es-2": ec.generate_private_key(ec.SECP256R1()),
            "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ed-1": ed25519.Ed25519PrivateKey.generate(),
        }
        algs = {"es-1": "ES256", "es-2": "ES256", "rsa-1": "RS256", "ed-1": "EdDSA"}
        jwks = {kid: _jwk(key, kid, algs[kid]) for kid, key in private.items()}
        path = folder / "jwks.json"
        path.write_text(json.dumps({"keys": [public_jwk(j) for j in jwks.values()]}))
        return cls(path, private, jwks, outsider=ec.generate_private_key(ec.SECP256R1()))

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "tester",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "scope": "orch:read",
            "tenant": "acme",
        }
        for key, value in overrides.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def token(self, *, kid: str = "es-1", alg: str | None = None, headers: dict[str, Any] | None = None,
              key: Any = None, **claims: Any) -> str:
        alg = alg or self.jwks[kid]["alg"] if kid in self.jwks else alg or "ES256"
        signing_key = key if key is not None else self.private[kid]
        return jwt.encode(self.claims(**claims), signing_key, algorithm=alg, headers={"kid": kid, **(headers or {})})


@dataclass
class DPoPKey:
    private: Any
    jwk: dict[str, Any]

    @classmethod
    def generate(cls) -> DPoPKey:
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(private))
        return cls(private, jwk)

    @property
    def thumbprint(self) -> str:
        return jwk_thumbprint(self.jwk)

    def proof(
        self,
        method: str,
        url: str,
        access_token: str | None,
        *,
        typ: str = "dpop+jwt",
        alg: str = "ES256",
        iat: float | None = None,
        jti: str | None = None,
        ath: str | None | bool = True,
        jwk: dict[str, Any] | None = None,
        key: Any = None,
    ) -> str:
        claims: dict[str, Any] = {
            "htm": method,
            "htu": url,
            "iat": int(iat if iat is not None else time.time()),
            "jti": jti or uuid.uuid4().hex,
        }
        if ath is True and access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        elif isinstance(ath, str):
            claims["ath"] = ath
        header_jwk = public_jwk(jwk if jwk is not None else self.jwk)
        return jwt.encode(claims, key or self.private, algorithm=alg, headers={"typ": typ, "jwk": header_jwk})
