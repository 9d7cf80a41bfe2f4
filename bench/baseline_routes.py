"""The two ceilings of every list route, for ``bench/list_routes.py``.

``create_db_app``: the database-bound ceiling. For each route a bare Litestar handler runs, with raw
asyncpg on a pool of the gateway's size, the very statements the gateway sent for that route's
first page (captured from the gateway itself, text and parameters), and answers the page's rows as
JSON items with camelCase keys and a continuation token of the same cost (an HMAC over the last
row's key). No authentication, no ORM, no envelope.

``create_static_app``: the framework ceiling. For each route the gateway's own first page, decoded
once and encoded on every request.

Both read ``BENCH_ROUTES`` (a pickle written by the benchmark: path -> statements, key columns,
page body); the database app also ``BENCH_PG_DSN``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pickle
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Response, get
from litestar.datastructures import State

SECRET = b"baseline-cursor-secret-0123456789"
POOL_SIZE = 20  # JOBGATE_DATABASE_POOL_SIZE's default


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _token(key: list[Any]) -> str:
    body = msgspec.json.encode([1, int(time.time()) // 3600 * 3600, key])
    mac = hmac.new(SECRET, body, hashlib.sha256).digest()[:16]
    return "k0.{}.{}".format(*(base64.urlsafe_b64encode(b).rstrip(b"=").decode() for b in (body, mac)))


def routes() -> dict[str, dict[str, Any]]:
    return pickle.loads(Path(os.environ["BENCH_ROUTES"]).read_bytes())


def create_db_app() -> Litestar:
    dsn = os.environ["BENCH_PG_DSN"]
    state = State()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_SIZE)
        try:
            yield
        finally:
            await state.pool.close()

    def handler(path: str, route: dict[str, Any]):  # type: ignore[no-untyped-def]
        statements, limit, key_columns = route["statements"], route["limit"], route["key_columns"]
        page_key = route["page_key"]
        names: list[str] = []  # the page's camelCase keys, from the first answer's columns

        async def page() -> Response[bytes]:
            async with state.pool.acquire() as connection:
                for sql, parameters in statements[:-1]:
                    await connection.fetch(sql, *parameters)
                rows = await connection.fetch(statements[-1][0], *statements[-1][1])
            more = len(rows) > limit
            rows = rows[:limit]
            if rows and not names:
                names.extend(_camel(k) for k in rows[0].keys())
            items = [dict(zip(names, row.values())) for row in rows]
            last = rows[-1] if rows else None
            token = _token([str(last[c]) for c in key_columns]) if more and last is not None else None
            body = msgspec.json.encode({page_key: items, "continuationToken": token}, order="deterministic")
            return Response(body, media_type="application/json")

        return get(path, name=path)(page)

    return Litestar(
        route_handlers=[handler(path, route) for path, route in routes().items()], lifespan=[lifespan], debug=False
    )


def create_static_app() -> Litestar:
    def handler(path: str, body: bytes):  # type: ignore[no-untyped-def]
        page = msgspec.json.decode(body)

        async def static() -> Response[bytes]:
            return Response(msgspec.json.encode(page, order="deterministic"), media_type="application/json")

        return get(path, name=path)(static)

    return Litestar(
        route_handlers=[handler(path, route["body"]) for path, route in routes().items()], debug=False
    )
