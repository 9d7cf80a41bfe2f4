"""A bounded request load against gateway processes, recording every answer with its timing.

Each client alternates a single replay of a dead-letter entry (with an ``Idempotency-Key`` of
its own, retried with the same key after ``Retry-After`` until it is accepted) and a read.
The load stops when told to or at its deadline, whichever comes first.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

REQUEST_TIMEOUT = 10.0
PACE_SECONDS = 0.1  # per client and iteration: a steady load, not a flood on two shared cores


@dataclass
class Answer:
    kind: str  # "replay" or "read"
    started: float
    ended: float
    status: int | None  # None: no answer (connection error or timeout)
    error: str | None = None
    content_type: str = ""
    retry_after: str | None = None
    code: str | None = None
    key: str | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    @property
    def is_unavailable_problem(self) -> bool:
        return (
            self.status == 503
            and self.content_type.startswith("application/problem+json")
            and bool(self.retry_after)
        )


@dataclass
class Load:
    urls: list[str]
    headers: Callable[[], dict[str, str]]
    entry_ids: list[str]
    reads: list[str]
    clients: int = 4
    answers: list[Answer] = field(default_factory=list)
    attempted: set[str] = field(default_factory=set)  # entry ids replayed at least once
    accepted: dict[str, Answer] = field(default_factory=dict)  # entry id -> its 202

    def __post_init__(self) -> None:
        self._fresh = collections.deque(self.entry_ids)
        self._retries: list[tuple[float, str]] = []  # (not before, entry id); retries go first
        self._stop = asyncio.Event()
        self._draining = False
        self._in_flight = 0

    @staticmethod
    def key_of(entry_id: str) -> str:
        return f"drill-{entry_id}"

    def stop(self) -> None:
        self._stop.set()

    def since(self, moment: float) -> list[Answer]:
        return [a for a in self.answers if a.started >= moment]

    def drain(self) -> None:
        """Start no new replays; the ones refused so far are still retried until accepted."""
        self._draining = True

    def settled_after(self, moment: float, *, successes: int = 10) -> bool:
        """Drained, every replay attempted is accepted, and the last ``successes`` answers, all
        begun after ``moment`` (and so after the last failure), succeeded."""
        if not self._draining or self._in_flight or self.attempted - set(self.accepted):
            return False
        recent = self.answers[-successes:]
        return len(recent) == successes and all(a.ok and a.started > moment for a in recent)

    async def run(self, deadline_seconds: float) -> None:
        deadline = time.monotonic() + deadline_seconds
        await asyncio.gather(*(self._client(n, deadline) for n in range(self.clients)))

    async def _client(self, n: int, deadline: float) -> None:
        base = self.urls[n % len(self.urls)]
        reads = itertools.cycle(self.reads[n % len(self.reads) :] + self.reads[: n % len(self.reads)])
        async with httpx.AsyncClient(
            base_url=base, timeout=REQUEST_TIMEOUT, headers=self.headers()
        ) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                tick = time.monotonic() + PACE_SECONDS
                await self._replay_next(client)
                await self._send(client, "read", "GET", next(reads))
                await asyncio.sleep(max(0.0, tick - time.monotonic()))

    async def _replay_next(self, client: httpx.AsyncClient) -> None:
        now = time.monotonic()
        due = next((r for r in self._retries if r[0] <= now), None)
        if due is not None:
            self._retries.remove(due)
            entry_id = due[1]
        elif self._fresh and not self._draining:
            entry_id = self._fresh.popleft()
        else:
            return
        key = self.key_of(entry_id)
        self.attempted.add(entry_id)
        self._in_flight += 1
        try:
            answer = await self._send(
                client, "replay", "POST", f"/jobengine/deadletter/{entry_id}/replay", key=key
            )
        finally:
            self._in_flight -= 1
        if answer.status == 202:
            self.accepted[entry_id] = answer
        else:  # retry with the same key, as a client that honours Retry-After does
            wait = float(answer.retry_after) if answer.retry_after and answer.retry_after.isdigit() else 1.0
            self._retries.append((time.monotonic() + wait, entry_id))

    async def _send(
        self, client: httpx.AsyncClient, kind: str, method: str, path: str, *, key: str | None = None
    ) -> Answer:
        headers = {"Idempotency-Key": key} if key else {}
        started = time.monotonic()
        try:
            response = await client.request(method, path, headers=headers)
        except httpx.HTTPError as exc:
            answer = Answer(kind, started, time.monotonic(), None, error=type(exc).__name__, key=key)
        else:
            code = None
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                code = response.json().get("code")
            answer = Answer(
                kind,
                started,
                time.monotonic(),
                response.status_code,
                content_type=response.headers.get("content-type", ""),
                retry_after=response.headers.get("retry-after"),
                code=code,
                key=key,
                replayed=response.headers.get("idempotent-replayed") == "true",
            )
        self.answers.append(answer)
        return answer
