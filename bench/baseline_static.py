"""The framework ceiling: a bare Litestar handler answering an equal static 50-item page.

The page is the gateway's own first page, captured once by the benchmark (``BENCH_STATIC_BODY``
names the file). It is decoded into the same Structs at start-up and encoded on every request,
as the gateway and the database baseline do, so the difference to them is the database round
trip and everything around it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import msgspec
from litestar import Litestar, Response, get
from litestar.params import Parameter

from bench.baseline_db import SourcePage


def create_app() -> Litestar:
    page = msgspec.json.decode(Path(os.environ["BENCH_STATIC_BODY"]).read_bytes(), type=SourcePage)

    @get("/jobengine/sources")
    async def list_sources(limit: Annotated[int, Parameter(ge=1, le=200)] = 50) -> Response[bytes]:
        body = msgspec.json.encode(page, order="deterministic")
        return Response(body, media_type="application/json")

    return Litestar(route_handlers=[list_sources], debug=False)
