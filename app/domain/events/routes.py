"""``GET /jobengine/events``: the caller's tenant's changes as they commit (text/event-stream)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from litestar import Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Scope, Send

from app.core.caller import Caller
from app.core.problems import Problem
from app.domain.events import stream
from app.http.routes import protected

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

EVENTS_DESCRIPTION = (
    "Server-sent events of the caller's tenant (and project under `X-Stella-Project`): each change of an "
    "object the caller may read, as it commits. `event: <kind>.changed`, `id: <tenant sequence>` (monotonic "
    "per tenant), `data: {\"kind\", \"id\", \"version\", \"at\", \"projectId\"?}` (the ChangeEventData schema) — "
    "never the object itself; "
    "read it with the object's route. Kinds need the scope that reads them: `quota` orch:quota; `deadletter`, "
    "`audit` and `worker` orch:operate; the rest orch:read. `worker.changed`: a worker that may run the tenant's "
    "jobs (as GET /jobengine/workers lists them) registered, changed what it serves, stopped, or missed its "
    "heartbeats (announced by the reconciler's next pass), or came back; an ordinary heartbeat is no event "
    "(a worker's `running` and `lastSeenAt` are read from GET /jobengine/workers). Changes of one object within "
    f"{int(stream.COALESCE_SECONDS * 1000)} ms are sent once, as the latest. `Last-Event-ID` resumes after "
    "that event with every change since, within the retention window (JOBGATE_FEED_RETENTION_SECONDS, at "
    "least 10 minutes); an id older than that (or unknown) gets one `event: reset` (its id is the current "
    "sequence: re-read what you show). A comment line every 15 s keeps the connection alive. The stream ends "
    "at the token's `exp`, at shutdown (with a `retry:` hint), or when the reader stays behind: more than "
    f"{stream.CAPACITY} changes waiting are read back from the database instead, coalesced, and a reader "
    f"still behind after {stream.CATCH_UPS} such read-backs in a row is dropped (`retry: 100`; resume with "
    "`Last-Event-ID`). Open streams are "
    "limited per tenant (JOBGATE_STREAMS_PER_TENANT) and per process (JOBGATE_STREAMS_PER_PROCESS): 429 "
    "`too_many_streams` with Retry-After. A DPoP-bound token needs its proof at connect time only."
)

TOO_MANY = (
    "Tenant request budget spent (rate_limited), or too many open event streams (too_many_streams); see "
    "Retry-After"
)

EventKinds = Annotated[
    str | None,
    Parameter(
        query="kinds",
        max_length=200,
        pattern=r"^[a-z]+(,[a-z]+)*$",
        description="Comma list of kinds: " + ", ".join(stream.KIND_SCOPES) + " (default: every kind the "
        "caller's scopes may read). An unknown kind is 400.",
    ),
]
LastEventId = Annotated[
    str | None,
    Parameter(header="Last-Event-ID", max_length=18, pattern=r"^[0-9]+$",
              description="Resume after this event id (sent by EventSource on reconnection)."),
]

EVENT_STREAM = ResponseSpec(
    data_container=str,
    media_type="text/event-stream",
    description="The event stream (text/event-stream).",
    generate_examples=False,
)


class EventStream(Stream):
    """A server-sent event stream (the bytes of :func:`stream.encode`) whatever media type its route
    declares: the lifecycle routes answer JSON, or this when asked for ``text/event-stream``.
    ``release`` gives the stream's budget slot back, however its response ends."""

    def __init__(self, iterator: Any, *, release: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(iterator, **kwargs)
        self.release = release

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIStreamingResponse:
        headers = kwargs.get("headers")
        return EventStreamResponse(
            iterator=self.iterator,  # type: ignore[arg-type]
            background=self.background or kwargs.get("background"),
            content_length=0,
            cookies=itertools.chain(self.cookies, kwargs.get("cookies") or ()),
            encoded_headers=kwargs.get("encoded_headers"),
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers else self.headers,
            is_head_response=kwargs.get("is_head_response", False),
            media_type="text/event-stream",
            status_code=self.status_code or kwargs.get("status_code"),
            release=self.release,
        )


class EventStreamResponse(ASGIStreamingResponse):
    """Sends the stream in the request's own task, with one small task watching for the client's
    disconnect (which cancels the send loop: the stream's generator ends at once and releases its
    subscription and budget). Litestar's streaming response runs a task group of two tasks per
    response instead; a process holds thousands of idle streams."""

    __slots__ = ("gone", "release")

    def __init__(self, *args: Any, release: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when the body never started (the client left before the response's start was
            # sent): the generator's own ``finally`` does not run for a generator never started.
            await self.release()

    async def send_body(self, send: Send, receive: Receive) -> None:
        self.gone = False
        watcher = asyncio.ensure_future(self._watch(receive, asyncio.current_task()))
        iterator = self.iterator
        try:
            async for chunk in iterator:
                body = {"type": "http.response.body", "body": chunk, "more_body": True}
                await send(body)  # type: ignore[arg-type]
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.gone:
                raise
            # the client left: the stream is over, and the request ends normally
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            self.gone = True  # from here the watcher cancels nothing
            watcher.cancel()
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _watch(self, receive: Receive, task: asyncio.Task[Any] | None) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.gone and task is not None:
            self.gone = True
            task.cancel()


def deadline_of(request: Request[Any, Any, Any]) -> float:
    """The monotonic instant of the token's expiry: the stream ends there."""
    exp = getattr(request.auth, "expires", None)
    seconds = exp - time.time() if exp is not None else 3600.0
    return time.monotonic() + max(0.0, seconds)


def runtime_feed(request: Request[Any, Any, Any]) -> Any:
    runtime = request.app.state.runtime
    if runtime.feed is None:
        raise Problem(503, "service_unavailable", "The change feed is not running in this process.",
                      headers={"Retry-After": "5"})
    return runtime


def budget_of(request: Request[Any, Any, Any]) -> stream.StreamBudget:
    state = request.app.state
    budget = state.get("stream_budget")
    if budget is None:
        settings = state.runtime.settings
        budget = stream.StreamBudget(state.runtime.store, settings.streams_per_tenant, settings.streams_per_process)
        state["stream_budget"] = budget
    return budget


async def open_stream(
    request: Request[Any, Any, Any], caller: Caller, messages: Any, tenant_id: int
) -> EventStream:
    """Take a slot of the stream budget (429 when none is left) and stream ``messages(keep)``."""
    budget = budget_of(request)
    stream_id = uuid.uuid4().hex
    await budget.take(tenant_id, stream_id)

    async def keep() -> bool:
        return await budget.renew(tenant_id, stream_id)

    released = False

    async def release() -> None:
        nonlocal released
        if not released:
            released = True
            await budget.give_back(tenant_id, stream_id)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for outgoing in messages(keep):
                yield stream.encode(outgoing)
        finally:
            await release()

    return EventStream(body(), release=release, headers=SSE_HEADERS)


@get(
    "/jobengine/events",
    **protected("orch:read", cache="none", s429=TOO_MANY),
    summary="The tenant's changes, as server-sent events",
    description=EVENTS_DESCRIPTION,
    tags=["events"],
    media_type="text/event-stream",
    response_description="The event stream",
)
async def events(
    request: Request[Any, Any, Any], caller: Caller, kinds: EventKinds = None, last_event_id: LastEventId = None
) -> EventStream:
    runtime = runtime_feed(request)
    wanted = stream.parse_kinds(kinds, caller)
    after = stream.parse_last_event_id(last_event_id)
    deadline = deadline_of(request)

    def messages(keep: Any) -> AsyncIterator[stream.Outgoing]:
        return stream.change_events(runtime.feed, runtime.sessions, caller, wanted, after, deadline, keep=keep)

    return await open_stream(request, caller, messages, caller.tenant_id)


events.responses[200] = EVENT_STREAM  # type: ignore[index]
events.opt["stream"] = True

ROUTES = [events]
