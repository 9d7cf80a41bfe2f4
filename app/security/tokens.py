"""Access-token verification (RFC 8725): one JWKS, one algorithm family, strict claims."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import jwt

from app.security.keys import KeySet

LEEWAY_SECONDS = 60
MAX_TOKEN_BYTES = 8 * 1024
VERIFIED_CACHE_SIZE = 10_000
_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]


class AuthError(Exception):
    """The credentials are invalid; ``description`` is safe to show (RFC 6750 error_description)."""

    def __init__(self, description: str, reason: str = "invalid_token") -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    subject: str
    client_id: str | None
    tenants: tuple[str, ...]
    scopes: frozenset[str]
    jkt: str | None  # cnf.jkt: the token is bound to this DPoP key
    expires: float | None = None  # exp: an event stream ends there


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    scopes: set[str] = set()
    if isinstance(claims.get("scope"), str):
        scopes.update(claims["scope"].split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        scopes.update(s for s in scp if isinstance(s, str))
    elif isinstance(scp, str):
        scopes.update(scp.split())
    return frozenset(scopes)


def _tenants(claims: dict[str, Any]) -> tuple[str, ...]:
    value = claims.get("tenant")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


class TokenVerifier:
    def __init__(
        self, keys: KeySet, *, issuer: str, audience: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self._clock = clock
        self._verified: dict[str, tuple[Claims, float, str, Any]] = {}

    async def verify(self, token: str) -> Claims:
        """Verify ``token``; a token verified before is answered from the cache while it is
        unexpired and its key is still the loaded key of its ``kid`` (a rotated-out key ends it).
        Raises :class:`KeysUnavailable` while the key set is too stale to trust, cached or not."""
        self.keys.ensure_available()
        cached = self._verified.get(token)
        if cached is not None:
            claims, expires, kid, key = cached
            if self._clock() <= expires + LEEWAY_SECONDS and self.keys.loaded(kid) is key:
                return claims
            del self._verified[token]
        claims, expires, kid = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # oldest first (insertion order)
        self._verified[token] = (claims, expires, kid, self.keys.loaded(kid))
        return claims

    async def _verify(self, token: str) -> tuple[Claims, float, str]:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large", "malformed")
        if token.count(".") != 2:
            raise AuthError("malformed token", "malformed")
        try:
            header = jwt.get_unverified_header(token)
        except Exception:  # noqa: BLE001 - any parse failure of attacker input is a 401
            raise AuthError("malformed token", "malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.keys.algorithms:
            raise AuthError("algorithm not allowed", "algorithm")
        if "crit" in header:
            raise AuthError("critical header parameters are not supported", "crit")
        if header.get("typ") not in (None, "JWT", "at+jwt", "application/at+jwt"):
            raise AuthError("unexpected token type", "typ")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise AuthError("token has no usable kid", "kid")
        # jku, x5u, jwk and x5c are never followed: the key comes from our JWKS by kid only.
        key = await self.keys.get(kid)
        if key is None:
            raise AuthError("unknown signing key", "unknown_kid")
        if key.algorithm_name != alg:
            raise AuthError("algorithm does not match the key", "algorithm")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                # Times are checked below against this verifier's clock (one clock for the cache too).
                options={
                    "require": _REQUIRED,
                    "strict_aud": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise AuthError("audience not accepted", "audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("issuer not accepted", "issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"missing claim: {exc.claim}", "claims") from None
        except Exception:  # noqa: BLE001
            raise AuthError("invalid token", "signature") from None
        now = self._clock()
        times = {name: claims.get(name) for name in ("exp", "iat", "nbf")}
        if any(v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)) for v in times.values()):
            raise AuthError("invalid time claims", "claims")
        if times["exp"] is None or now > times["exp"] + LEEWAY_SECONDS:
            raise AuthError("token expired", "expired")
        if times["nbf"] is not None and times["nbf"] > now + LEEWAY_SECONDS:
            raise AuthError("token not yet valid", "immature")
        if times["iat"] is None or times["iat"] > now + LEEWAY_SECONDS:
            raise AuthError("token issued in the future", "immature")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= 256:
            raise AuthError("invalid subject", "claims")
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) and isinstance(cnf.get("jkt"), str) else None
        client = claims.get("client_id", claims.get("azp"))
        verified = Claims(
            subject=subject,
            client_id=client[:256] if isinstance(client, str) else None,
            tenants=_tenants(claims),
            scopes=_scopes(claims),
            jkt=jkt,
            expires=float(claims["exp"]),
        )
        return verified, float(claims["exp"]), kid
