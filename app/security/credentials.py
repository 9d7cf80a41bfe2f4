"""Credentials: ``Authorization: Bearer`` or ``Authorization: DPoP`` with its proof → the token's
claims, or a 401 with the RFC 6750/9449 challenge (503 while keys or the replay store are away)."""

from __future__ import annotations

import logging
from typing import Protocol

from litestar.types import Scope

from app import metrics
from app.core.problems import Problem
from app.http.tracing import header_values
from app.security.dpop import PROOF_ALGORITHMS, ProofVerifier, ReplayStoreUnavailable
from app.security.keys import KeysUnavailable
from app.security.tokens import AuthError, Claims, TokenVerifier
from app.settings import Settings

log = logging.getLogger("jobgate.envelope")

REALM = "stella-jobengine"


class CredentialServices(Protocol):
    """What verifying credentials needs of the process (the runtime has it)."""

    settings: Settings
    tokens: TokenVerifier
    proofs: ProofVerifier


class Credentials:
    def __init__(self, runtime: CredentialServices) -> None:
        self.runtime = runtime
        self.dpop_mode = runtime.settings.dpop
        self.public_url = runtime.settings.public_url

    def challenge(self, error: str | None = None, description: str | None = None, *, dpop_error: bool = False) -> str:
        params = [f'realm="{REALM}"']
        if error and not dpop_error:
            params.append(f'error="{error}"')
            if description:
                params.append(f'error_description="{description}"')
        bearer = "Bearer " + ", ".join(params)
        dpop_params = [f'algs="{" ".join(PROOF_ALGORITHMS)}"']
        if error:
            dpop_params.append(f'error="{"invalid_dpop_proof" if dpop_error else error}"')
            if description:
                dpop_params.append(f'error_description="{description}"')
        dpop = "DPoP " + ", ".join(dpop_params)
        if self.dpop_mode == "off":
            return bearer
        if self.dpop_mode == "required":
            return dpop
        return f"{bearer}, {dpop}"

    def unauthorised(self, error: AuthError | None) -> Problem:
        if error is None:
            metrics.AUTH_FAILURES.labels("missing").inc()
            return Problem(
                401, "unauthenticated", "Authentication is required.", headers={"WWW-Authenticate": self.challenge()}
            )
        metrics.AUTH_FAILURES.labels(error.reason).inc()
        dpop_error = error.reason.startswith("dpop")
        return Problem(
            401,
            "invalid_dpop_proof" if dpop_error else "invalid_token",
            f"The credentials were refused: {error.description}.",
            headers={"WWW-Authenticate": self.challenge("invalid_token", error.description, dpop_error=dpop_error)},
        )

    def request_url(self, scope: Scope) -> str:
        """The URL a DPoP proof's ``htu`` names: on ``JOBGATE_PUBLIC_URL`` when set, else on the
        request's own scheme and ``Host`` (then checked against ``JOBGATE_ALLOWED_HOSTS``)."""
        path = scope.get("raw_path", b"").decode("latin-1").split("?")[0] or scope["path"]
        if self.public_url:
            return self.public_url + path
        hosts = header_values(scope, b"host")
        host = hosts[0].decode("latin-1") if hosts else "localhost"
        return f"{scope.get('scheme', 'http')}://{host}{path}"

    async def verify(self, scope: Scope) -> Claims:
        values = header_values(scope, b"authorization")
        if not values:
            raise self.unauthorised(None)
        if len(values) > 1:
            raise self.unauthorised(AuthError("several Authorization headers", "malformed"))
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme not in {"bearer", "dpop"} or not token:
            raise self.unauthorised(AuthError("unsupported authorization scheme", "malformed"))
        try:
            claims = await self.runtime.tokens.verify(token)
            if scheme == "bearer":
                if self.dpop_mode == "required":
                    raise AuthError("DPoP-bound tokens are required", "bearer_refused")
                if claims.jkt is not None and self.dpop_mode != "off":
                    raise AuthError("a DPoP-bound token must be sent with the DPoP scheme", "bound_as_bearer")
                return claims
            if self.dpop_mode == "off":
                raise AuthError("DPoP is not enabled", "malformed")
            proofs = header_values(scope, b"dpop")
            if len(proofs) != 1:
                raise AuthError("exactly one DPoP proof is required", "dpop")
            await self.runtime.proofs.verify(
                proofs[0].decode("latin-1"),
                method=scope["method"],
                url=self.request_url(scope),
                access_token=token,
                jkt=claims.jkt,
            )
            return claims
        except AuthError as error:
            raise self.unauthorised(error) from None
        except KeysUnavailable as unavailable:
            # Fail closed: a key revoked at the provider since the last good fetch must not verify.
            # The refresh failures are logged and counted where they happen (app/security/keys.py).
            raise Problem(
                503,
                "keys_unavailable",
                "The token signing keys cannot be confirmed with the identity provider right now; retry shortly.",
                headers={"Retry-After": str(unavailable.retry_after)},
            ) from None
        except ReplayStoreUnavailable:
            log.error("DPoP replay store unavailable; refusing DPoP request")
            raise Problem(
                503,
                "replay_store_unavailable",
                "DPoP proofs cannot be checked right now; retry shortly.",
                headers={"Retry-After": "2"},
            ) from None
