"""Verification keys: a JWKS from a file or a URL, keys selected by ``kid``.

An unknown ``kid`` triggers at most one refetch per :data:`REFETCH_INTERVAL` (and only one at a
time); when a refetch fails the last good key set stays in use. A document that is not a JWKS or
holds no usable key counts as a failed fetch. Keys whose algorithm is outside the allow-list are
never loaded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

log = logging.getLogger("jobgate.auth")

REFETCH_INTERVAL = 30.0
MAX_JWKS_BYTES = 256 * 1024


class KeySet:
    def __init__(
        self,
        algorithms: tuple[str, ...],
        *,
        file: Path | None = None,
        url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.algorithms = algorithms
        self._file = file
        self._url = url
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _parse(self, raw: bytes) -> dict[str, jwt.PyJWK]:
        document = json.loads(raw)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict):
                continue
            kid = entry.get("kid")
            if not isinstance(kid, str) or "d" in entry or entry.get("use", "sig") != "sig":
                continue  # keys without kid, private keys and encryption keys are never used
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                log.warning("ignoring an unusable key in the JWKS (kid=%s)", kid[:64])
                continue
            if key.algorithm_name in self.algorithms:
                keys[kid] = key
        if not keys:
            # An error page served as JSON must not wipe the keys in use (as a failed fetch).
            raise ValueError("the JWKS holds no usable key")
        return keys

    async def _read(self) -> bytes:
        if self._file is not None:
            return await asyncio.to_thread(self._file.read_bytes)
        assert self._url is not None
        async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
            response = await client.get(self._url, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            return response.content

    async def refresh(self) -> None:
        """Fetch the key set now; keep the last good one on failure."""
        self._last_fetch = self._clock()
        self.fetches += 1
        try:
            keys = self._parse(await self._read())
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good set
            log.warning("JWKS refresh failed, keeping %d known keys: %s", len(self._keys), type(exc).__name__)
            return
        self._keys = keys

    def loaded(self, kid: str) -> jwt.PyJWK | None:
        """The key currently loaded for ``kid``, without fetching."""
        return self._keys.get(kid)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is None and self._clock() - self._last_fetch >= REFETCH_INTERVAL:
                await self.refresh()
                key = self._keys.get(kid)
        return key


_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise ValueError("unsupported or incomplete JWK")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- the development key, generated once into the data directory -------------------------------


def _ensure_dev_key(jwks_path: Path, private_path: Path) -> dict[str, Any]:
    if private_path.exists() and jwks_path.exists():
        return json.loads(private_path.read_text())
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(private))
    kid = "dev-" + jwk_thumbprint(jwk)[:16]
    jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
    public = {k: v for k, v in jwk.items() if k != "d"}
    jwks_path.parent.mkdir(parents=True, exist_ok=True)
    jwks_path.write_text(json.dumps({"keys": [public]}, indent=2))
    private_path.write_text(json.dumps(jwk))
    private_path.chmod(0o600)
    return jwk


def dev_signing_key(data_dir: Path) -> dict[str, Any]:
    """The private JWK of the development key (created on first use)."""
    return _ensure_dev_key(data_dir / "dev-jwks.json", data_dir / "dev-signing-key.json")
