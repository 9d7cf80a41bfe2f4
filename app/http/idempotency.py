"""``Idempotency-Key`` on mutations (IETF httpapi idempotency-key draft).

Two halves around the handler. :class:`IdempotencyClaim`, the app's ``before_request`` hook,
runs after the guards (so a request refused for its rate, scope or reason never claims or
replays a key): it checks the key, reads the body and claims the key, and answers a completed
first request's stored response in place of the handler. :class:`IdempotencySettle`, an ASGI
middleware, sees the whole response and settles the claim after it. (A middleware alone cannot
do both: Litestar runs every middleware before the guards.)

A key is claimed (committed, ``in_flight``) before the handler runs. A handler that commits
through :class:`app.http.mutation.Mutation` stores its response in the same transaction as its
change, so a completed change and its stored answer can never be separated. Same key and same
request replays the stored answer; a different request with the key is 422; a request while the
first is still running is 409. A failed first request releases the key. Keys are scoped to
(tenant, subject) and kept for :data:`RETENTION`.

When the database is away as a request ends (an outage is also why it failed), its key cannot
be released then: it is released in the background as soon as the database answers again, and
at the latest before the next claim of the same key in this process, so that a client retrying
after ``Retry-After`` is not refused with 409 for the whole :data:`LOCK`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.caller import Caller
from app.core.problems import Problem
from app.http.tracing import header_values
from app.security.audit import DRY_RUN_KEY, REPLAYED_KEY
from app.security.guards import MUTATING
from app.security.header_rules import idempotency_key
from app.storage.idempotency import RETENTION, complete_in, record_key, release_in
from app.storage.models import IdempotencyRecord

log = logging.getLogger("jobgate.idempotency")

LOCK = timedelta(seconds=60)
SETTLE_RETRY_SECONDS = 0.25
_KEPT_HEADERS = {b"content-type", b"location", b"etag", b"cache-control"}
CLAIM_KEY = "jobgate_idempotency_claim"


@dataclass
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def replay(self) -> Response[bytes]:
        headers = {k: v for k, v in self.headers.items() if k != "content-type"}
        headers["idempotent-replayed"] = "true"
        return Response(
            content=self.body, status_code=self.status, headers=headers, media_type=self.headers.get("content-type")
        )


@dataclass
class Captured:
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


_Ident = tuple[int, str, str]


def _ident(caller: Caller) -> _Ident:
    return (caller.tenant.id, caller.subject, caller.idempotency_key or "")


class IdempotencyStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        # Requests that ended while the database was away, by key: settled later (see the module doc).
        self._unsettled: dict[_Ident, tuple[Caller, Captured]] = {}
        self._retries: set[asyncio.Task[None]] = set()

    @staticmethod
    def fingerprint(scope: Scope, body: bytes) -> str:
        """The request as far as its meaning goes: method, path, query, the project it is narrowed
        to (the same body under another ``X-Stella-Project`` is another request) and the body."""
        project = b"\x00".join(value for name, value in scope["headers"] if name.lower() == b"x-stella-project")
        digest = hashlib.sha256()
        for part in (scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b""), project, body):
            digest.update(len(part).to_bytes(8, "big") + part)
        return digest.hexdigest()

    async def claim(self, caller: Caller, fingerprint: str) -> StoredResponse | None:
        """Claim the key; return the stored response when the first request already completed."""
        await self._settle_unsettled(_ident(caller))
        now = datetime.now(UTC)
        values = dict(
            tenant_id=caller.tenant.id,
            subject=caller.subject,
            key=caller.idempotency_key,
            request_hash=fingerprint,
            state="in_flight",
            locked_until=now + LOCK,
            created_at=now,
            expires_at=now + RETENTION,
        )
        async with self._sessions.begin() as session:
            insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
            claimed = await session.execute(insert(IdempotencyRecord).values(**values).on_conflict_do_nothing())
            if claimed.rowcount == 1:
                return None
            # An expired record, or an abandoned in-flight one, may be taken over atomically.
            taken = await session.execute(
                update(IdempotencyRecord)
                .where(
                    *record_key(caller),
                    (IdempotencyRecord.expires_at < now)
                    | ((IdempotencyRecord.state == "in_flight") & (IdempotencyRecord.locked_until < now)),
                )
                .values(**{k: v for k, v in values.items() if k not in {"tenant_id", "subject", "key"}})
            )
            if taken.rowcount == 1:
                return None
            record = (await session.execute(select(IdempotencyRecord).where(*record_key(caller)))).scalar_one()
        if record.request_hash != fingerprint:
            raise Problem(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request; use a new key.",
            )
        if record.state != "done":
            raise Problem(
                409,
                "idempotency_in_flight",
                "A request with this Idempotency-Key is still being processed; retry later.",
                headers={"Retry-After": "1"},
            )
        return StoredResponse(record.response_status or 200, record.response_headers or {}, record.response_body or b"")

    async def settle(self, caller: Caller, captured: Captured) -> None:
        """After the response: release the key of a failed request; store a response not yet stored."""
        try:
            await self._settle(caller, captured)
        except Exception as exc:  # noqa: BLE001 - the response is sent; settling is retried
            log.warning("idempotency key not settled, retrying in the background (%s)", type(exc).__name__)
            self._unsettled[_ident(caller)] = (caller, captured)
            task = asyncio.create_task(self._settle_later(_ident(caller)))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _settle_unsettled(self, ident: _Ident) -> None:
        """Settle the request left unsettled under ``ident``, if any (raises while the database is
        away). Taking it out of the map first means one settling at a time, never after a new claim."""
        pending = self._unsettled.pop(ident, None)
        if pending is None:
            return
        try:
            await self._settle(*pending)
        except Exception:
            self._unsettled.setdefault(ident, pending)
            raise

    async def _settle_later(self, ident: _Ident) -> None:
        pending = self._unsettled.get(ident)
        deadline = time.monotonic() + LOCK.total_seconds()  # past the lock the key can be taken over anyway
        while ident in self._unsettled and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_RETRY_SECONDS)
            try:
                await self._settle_unsettled(ident)
            except Exception:  # noqa: BLE001, S112 - still away; try again
                continue
        if pending is not None and self._unsettled.get(ident) is pending:
            del self._unsettled[ident]

    async def _settle(self, caller: Caller, captured: Captured) -> None:
        async with self._sessions.begin() as session:
            if captured.status >= 400:
                await release_in(session, caller)
            else:
                await complete_in(session, caller, captured.status, captured.headers, bytes(captured.body))


def _asks_for_a_dry_run(body: bytes) -> bool:
    """Whether a request whose first answer is replayed was a dry run (its audit row says so, as
    the first one's did): only a request the handler accepted has a stored answer, so its body is
    the JSON object the handler read."""
    try:
        decoded = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        return False
    return isinstance(decoded, dict) and decoded.get("dryRun") is True


class IdempotencyClaim:
    """``before_request``: claim the request's key; a completed first request's answer is returned
    (and so sent instead of calling the handler), marked for the audit as a replay."""

    def __init__(self, store: IdempotencyStore) -> None:
        self.store = store

    async def __call__(self, request: Request[Any, Any, Any]) -> Response[bytes] | None:
        scope = request.scope
        caller: Caller | None = scope.get("user")
        if caller is None or scope["method"] not in MUTATING:
            return None
        key = idempotency_key(header_values(scope, b"idempotency-key"))
        if key is None:
            return None
        caller = replace(caller, idempotency_key=key)
        scope["user"] = caller
        body = await request.body()
        stored = await self.store.claim(caller, self.store.fingerprint(scope, body))
        if stored is not None:
            scope["state"][REPLAYED_KEY] = True
            scope["state"][DRY_RUN_KEY] = _asks_for_a_dry_run(body)
            return stored.replay()
        scope["state"][CLAIM_KEY] = caller
        return None


class IdempotencySettle:
    """ASGI middleware: once a request that claimed a key has answered, settle the claim with its
    response (release it after a failure, store an answer the handler did not store)."""

    def __init__(self, app: ASGIApp, store: IdempotencyStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING or not header_values(scope, b"idempotency-key"):
            await self.app(scope, receive, send)
            return
        captured = Captured()

        async def tee(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured.status = message["status"]
                captured.headers = {
                    k.decode().lower(): v.decode("latin-1")
                    for k, v in message.get("headers", [])
                    if k.lower() in _KEPT_HEADERS
                }
            elif message["type"] == "http.response.body":
                captured.body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, tee)
        finally:
            caller = scope["state"].get(CLAIM_KEY)
            if caller is not None:
                await self.store.settle(caller, captured)
