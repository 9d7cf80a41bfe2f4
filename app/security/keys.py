"""Verification keys: a JWKS from a file or a URL, keys selected by ``kid``, kept current on a
schedule.

Each process refreshes the key set every ``refresh_seconds`` (a URL's ``Cache-Control: max-age``
shortens that, but never below :data:`MIN_REFRESH_SECONDS`); a file is re-read only when it
changed. A key absent from a successful fetch stops verifying at once. A failed fetch keeps the
last good key set and is retried with backoff; once no fetch has succeeded for
``max_stale_seconds`` (or none ever has: the provider was unreachable at start-up) the key set is
unavailable and :meth:`KeySet.ensure_available` refuses, so tokens fail closed.

An unknown ``kid`` triggers at most one refetch per :data:`REFETCH_INTERVAL` (and only one at a
time), so a newly added key is accepted without waiting for the schedule. A document that is not
a JWKS or holds no usable key counts as a failed fetch. Keys whose algorithm is outside the
allow-list are never loaded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from app import metrics

log = logging.getLogger("jobgate.auth")

REFETCH_INTERVAL = 30.0
MIN_REFRESH_SECONDS = 30.0  # the floor under a provider's max-age (the settings' lower bound too)
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
MAX_JWKS_BYTES = 256 * 1024
# A file modified this recently is read again at the next check even if its mtime, size and inode
# look unchanged: a rewrite within the same tick of the filesystem clock keeps the same mtime.
_SETTLED_SECONDS = 2.0


class KeysUnavailable(Exception):
    """No key set fetched successfully within the allowed staleness: nothing can be verified."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("verification keys unavailable")
        self.retry_after = retry_after


def max_age(cache_control: str | None) -> float | None:
    """The ``max-age`` of a ``Cache-Control`` header (``no-cache``/``no-store`` count as 0)."""
    if not cache_control:
        return None
    for directive in cache_control.split(","):
        name, _, value = directive.partition("=")
        name = name.strip().lower()
        if name in ("no-cache", "no-store"):
            return 0.0
        if name == "max-age" and value.strip().strip('"').isdigit():
            return float(value.strip().strip('"'))
    return None


class KeySet:
    def __init__(
        self,
        algorithms: tuple[str, ...],
        *,
        file: Path | None = None,
        url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_seconds: float = 300.0,
        max_stale_seconds: float = 86400.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.algorithms = algorithms
        self.refresh_seconds = refresh_seconds
        self.max_stale_seconds = max_stale_seconds
        self.source = "file" if file is not None else "url"
        self._file = file
        self._url = url
        self._clock = clock
        self._jitter = jitter  # [0, 1): spreads the retries of many processes after an outage
        self._keys: dict[str, jwt.PyJWK] = {}
        self._entries: dict[str, str] = {}  # kid -> the key's JWKS entry (canonical JSON)
        self._file_seen: tuple[int, int, int] | None = None  # mtime, size, inode of the file read
        self._last_fetch = float("-inf")  # the last attempt, for the unknown-kid limit
        self._fresh_at: float | None = None  # the last successful fetch
        self._next_refresh = float("-inf")
        self._failures = 0  # consecutive failed fetches
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0

    # -- the schedule ---------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        """The longest time between two refreshes. At least two fall within the staleness window,
        so that a process whose provider answers never goes stale between them."""
        return min(self.refresh_seconds, self.max_stale_seconds / 2)

    def _interval_for(self, provider_max_age: float | None) -> float:
        if provider_max_age is None:
            return self.interval
        # The provider may ask for earlier refreshes, but not more often than the floor allows.
        return min(self.interval, max(provider_max_age, min(MIN_REFRESH_SECONDS, self.interval)))

    def _backoff(self) -> float:
        """The delay before the next retry: doubling from 1 s up to 60 s (and the interval), less a
        random share of up to half, so that the processes of a fleet that lost the provider together
        do not all retry in the same second once it is back."""
        ceiling = min(BACKOFF_FIRST_SECONDS * 2 ** min(self._failures - 1, 16), BACKOFF_MAX_SECONDS, self.interval)
        return ceiling * (1.0 - self._jitter() / 2)

    @property
    def next_refresh(self) -> float:
        """When the next scheduled fetch is due (on the key set's clock)."""
        return self._next_refresh

    def available(self) -> bool:
        """A fetch succeeded within ``max_stale_seconds``."""
        return self._fresh_at is not None and self._clock() - self._fresh_at <= self.max_stale_seconds

    def ensure_available(self) -> None:
        """Raise :class:`KeysUnavailable`, with the seconds until the next attempt, unless available."""
        if not self.available():
            wait = min(max(self._next_refresh - self._clock(), 1.0), BACKOFF_MAX_SECONDS)
            raise KeysUnavailable(math.ceil(wait))

    async def start(self) -> None:
        """Load the keys, then keep them current until :meth:`stop`. A failed first load does not
        raise: the process starts without keys (unavailable, so not ready) and retries."""
        if self._task is not None:
            return
        metrics.JWKS_FRESH.labels(self.source).set(0)  # no successful fetch yet
        metrics.JWKS_KEYS.labels(self.source).set(0)
        async with self._lock:
            await self.refresh()
        self._task = asyncio.create_task(self._run(), name="jobgate-jwks-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self._next_refresh - self._clock()))
            await self.refresh_if_due()

    async def refresh_if_due(self) -> bool:
        """The scheduled fetch, when it is due (an unknown-kid refetch may have moved it)."""
        async with self._lock:
            if self._clock() < self._next_refresh:
                return False
            await self.refresh(force=False)
            return True

    # -- fetching -------------------------------------------------------------------------------

    def _parse(self, raw: bytes) -> dict[str, tuple[str, jwt.PyJWK]]:
        document = json.loads(raw)
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str, tuple[str, jwt.PyJWK]] = {}
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
                keys[kid] = (json.dumps(entry, sort_keys=True), key)
        if not keys:
            # An error page served as JSON must not wipe the keys in use (as a failed fetch).
            raise ValueError("the JWKS holds no usable key")
        return keys

    def _read_file(self, force: bool) -> tuple[bytes | None, tuple[int, int, int] | None]:
        """The file's content, or None when it is unchanged since the last read (unless ``force``)."""
        assert self._file is not None
        stat = os.stat(self._file)  # follows the symlinks a mounted Kubernetes volume swaps
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if not force and seen == self._file_seen:
            return None, seen
        raw = self._file.read_bytes()
        return raw, None if time.time() - stat.st_mtime < _SETTLED_SECONDS else seen

    async def _read(self, force: bool) -> tuple[bytes | None, float | None, tuple[int, int, int] | None]:
        """(content or None if unchanged, the provider's max-age, the file's identity)."""
        if self._file is not None:
            raw, seen = await asyncio.to_thread(self._read_file, force)
            return raw, None, seen
        assert self._url is not None
        async with httpx.AsyncClient(timeout=5.0, follow_redirects=False) as client:
            response = await client.get(self._url, headers={"Accept": "application/json"})
            response.raise_for_status()
            if len(response.content) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            return response.content, max_age(response.headers.get("cache-control")), None

    async def refresh(self, *, force: bool = True) -> bool:
        """Fetch the key set now (a file only if it changed, unless ``force``); on failure keep the
        last good set and schedule a retry with backoff. Returns whether the fetch succeeded."""
        self._last_fetch = self._clock()
        self.fetches += 1
        try:
            raw, provider_max_age, seen = await self._read(force)
            parsed = None if raw is None else self._parse(raw)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the last good set
            self._failures += 1
            self._next_refresh = self._clock() + self._backoff()
            metrics.JWKS_REFRESHES.labels("invalid" if isinstance(exc, ValueError) else "error").inc()
            log.warning(
                "JWKS refresh failed (%s), keeping %d known keys; %d failure(s) in a row, next attempt in %.0f s",
                type(exc).__name__, len(self._keys), self._failures, self._next_refresh - self._clock(),
            )
            return False
        self._failures = 0
        self._fresh_at = self._clock()
        self._next_refresh = self._fresh_at + self._interval_for(provider_max_age)
        self._file_seen = seen
        changed = parsed is not None and self._replace(parsed)
        metrics.JWKS_REFRESHES.labels("changed" if changed else "unchanged").inc()
        metrics.JWKS_FRESH.labels(self.source).set(time.time())
        metrics.JWKS_KEYS.labels(self.source).set(len(self._keys))
        return True

    def _replace(self, parsed: dict[str, tuple[str, jwt.PyJWK]]) -> bool:
        """Load a fetched key set; returns whether it differs from the loaded one. An unchanged key
        keeps its object, so tokens verified with it stay cached (see TokenVerifier.verify)."""
        old = self._entries
        added = sorted(kid for kid in parsed if kid not in old)
        removed = sorted(kid for kid in old if kid not in parsed)
        replaced = sorted(kid for kid, (entry, _) in parsed.items() if kid in old and old[kid] != entry)
        self._keys = {
            kid: self._keys[kid] if old.get(kid) == entry else key for kid, (entry, key) in parsed.items()
        }
        self._entries = {kid: entry for kid, (entry, _) in parsed.items()}
        if not (added or removed or replaced):
            return False
        # Key ids only, never key material; a provider's kid is cut short and quoted by %r.
        log.info(
            "JWKS key set changed: added %r, removed %r, replaced %r; %d keys loaded",
            [k[:64] for k in added], [k[:64] for k in removed], [k[:64] for k in replaced], len(self._keys),
        )
        return True

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
