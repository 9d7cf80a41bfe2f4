"""DPoP proof verification (RFC 9449 §4.3)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt

from app.security.keys import jwk_thumbprint
from app.security.tokens import AuthError
from app.storage.shared import SharedStore

PROOF_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA")
MAX_AGE_SECONDS = 300  # how old a proof's iat may be
MAX_SKEW_SECONDS = 60  # how far in the future
_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


class ReplayStoreUnavailable(Exception):
    """The jti store could not be reached: DPoP fails closed."""


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path."""
    segments = path.split("/")
    output: list[str] = []
    for segment in segments:
        if segment == "..":
            if len(output) > 1:
                output.pop()
        elif segment != ".":
            output.append(segment)
    if segments[-1] in {".", ".."}:
        output.append("")
    return "/".join(output)


def normalise_htu(url: str) -> str:
    """The RFC 3986 §6.2.2-6.2.3 normal form of an ``htu``, without query and fragment.

    Scheme and host lower-cased, default (or empty) port dropped, percent-encoding normalised,
    dot segments removed, an empty path made ``/``. A URL with userinfo is refused (RFC 9110
    §4.2.4), as is one with an invalid port.
    """
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise AuthError("invalid htu", "dpop")
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        raise AuthError("invalid htu", "dpop") from None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    path = _remove_dot_segments(_PERCENT.sub(_decode_unreserved, parts.path)) or "/"
    return urlunsplit((scheme, netloc, path, "", ""))


def access_token_hash(token: str) -> str:
    digest = hashlib.sha256(token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class ProofVerifier:
    def __init__(self, store: SharedStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def verify(self, proof: str, *, method: str, url: str, access_token: str, jkt: str | None) -> str:
        """Check ``proof`` for this request and token; return the proof key's thumbprint."""
        if len(proof) > 8192 or proof.count(".") != 2:
            raise AuthError("malformed DPoP proof", "dpop")
        try:
            header = jwt.get_unverified_header(proof)
        except Exception:  # noqa: BLE001
            raise AuthError("malformed DPoP proof", "dpop") from None
        if header.get("typ") != "dpop+jwt":
            raise AuthError("DPoP proof typ must be dpop+jwt", "dpop")
        alg = header.get("alg")
        if alg not in PROOF_ALGORITHMS:
            raise AuthError("DPoP proof algorithm not allowed", "dpop")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or _PRIVATE_MEMBERS & jwk.keys():
            raise AuthError("DPoP proof must carry a public jwk", "dpop")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            thumbprint = jwk_thumbprint(jwk)
            claims: dict[str, Any] = jwt.decode(
                proof,
                key.key,
                algorithms=[alg],
                # iat is checked below against this verifier's window (PyJWT allows no future iat).
                options={"verify_aud": False, "verify_iat": False, "require": ["iat", "jti"]},
            )
        except Exception:  # noqa: BLE001
            raise AuthError("invalid DPoP proof", "dpop") from None
        if claims.get("htm") != method:
            raise AuthError("DPoP htm does not match", "dpop")
        htu = claims.get("htu")
        if not isinstance(htu, str) or normalise_htu(htu) != normalise_htu(url):
            raise AuthError("DPoP htu does not match", "dpop")
        iat = claims.get("iat")
        now = self._clock()
        numeric = isinstance(iat, (int, float)) and not isinstance(iat, bool)
        if not numeric or iat < now - MAX_AGE_SECONDS or iat > now + MAX_SKEW_SECONDS:
            raise AuthError("DPoP proof iat outside the accepted window", "dpop")
        if claims.get("ath") != access_token_hash(access_token):
            raise AuthError("DPoP ath does not match the access token", "dpop")
        if jkt is None or jkt != thumbprint:
            raise AuthError("DPoP key does not match the token binding", "dpop")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            raise AuthError("invalid DPoP jti", "dpop")
        jti_key = "dpop:" + hashlib.sha256(json.dumps([thumbprint, jti]).encode()).hexdigest()
        try:
            fresh = await self._store.add_once(jti_key, MAX_AGE_SECONDS + MAX_SKEW_SECONDS)
        except Exception as exc:  # noqa: BLE001
            raise ReplayStoreUnavailable() from exc
        if not fresh:
            raise AuthError("DPoP proof replayed", "dpop_replay")
        return thumbprint
