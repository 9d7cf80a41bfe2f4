"""Reading server-sent events from a live gateway (httpx streams the body as it arrives)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec


class Event(msgspec.Struct):
    event: str | None = None
    id: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = []

    def json(self) -> Any:
        return msgspec.json.decode(self.data or "null")


class EventReader:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10.0) -> Event:
        """The next event (or comment block); AssertionError after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._read(), timeout)
        except TimeoutError:
            raise AssertionError(f"no event within {timeout} s") from None

    async def next_event(self, timeout: float = 10.0) -> Event:
        """The next block that is an event (comments-only blocks skipped)."""
        while True:
            block = await self.next(timeout)
            if block.event is not None or block.data is not None:
                return block

    async def _read(self) -> Event:
        block = Event(comments=[])
        data: list[str] = []
        async for line in self._lines:
            if line == "":
                if data or block.event or block.id or block.retry is not None or block.comments:
                    block.data = "\n".join(data) if data else None
                    return block
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                block.comments.append(value)
            elif field == "event":
                block.event = value
            elif field == "id":
                block.id = value
            elif field == "data":
                data.append(value)
            elif field == "retry":
                block.retry = int(value)
        raise EOFError("the stream ended")

    async def ended(self, timeout: float = 10.0) -> list[Event]:
        """Every block until the stream ends (AssertionError if it does not within ``timeout``)."""
        blocks: list[Event] = []

        async def drain() -> None:
            while True:
                try:
                    blocks.append(await self._read())
                except EOFError:
                    return

        try:
            await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            raise AssertionError(f"the stream did not end within {timeout} s: {blocks}") from None
        return blocks


@asynccontextmanager
async def stream(
    url: str, headers: dict[str, str], transport: httpx.AsyncBaseTransport | None = None, **params: str
) -> AsyncIterator[EventReader]:
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30, read=60)) as client:
        async with client.stream("GET", url, headers=headers, params=params or None) as response:
            assert response.status_code == 200, (await response.aread()).decode()
            assert response.headers["content-type"].startswith("text/event-stream"), response.headers
            yield EventReader(response)


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """httpx's transport onto an in-process ASGI app that hands the body over as it is sent (httpx's own
    ASGITransport returns once the app has finished, which a stream never does by itself): a test can
    read a stream of the gateway whose runtime it holds. Closing the response is the client's
    disconnection."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        disconnected = asyncio.Event()
        body = await request.aread()
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "scheme": request.url.scheme, "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query, "root_path": "", "headers": list(request.headers.raw),
            "server": (request.url.host, request.url.port or 80), "client": ("127.0.0.1", 50000),
        }
        app = asyncio.ensure_future(self.app(scope, receive, send))
        start = await messages.get()
        assert start["type"] == "http.response.start", start

        class Body(httpx.AsyncByteStream):
            async def __aiter__(self) -> AsyncIterator[bytes]:
                while True:
                    message = await messages.get()
                    yield message.get("body", b"")
                    if not message.get("more_body", False):
                        return

            async def aclose(self) -> None:
                disconnected.set()
                await asyncio.wait_for(asyncio.gather(app, return_exceptions=True), 10)

        return httpx.Response(start["status"], headers=start["headers"], stream=Body())
