"""The ``limit`` and ``continuationToken`` query parameters of every list route (the tokens
themselves: ``app/core/cursors.py``; the pages: ``app/storage/pages.py``)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

from app.core.cursors import MAX_LIMIT

Limit = Annotated[
    int,
    Parameter(
        ge=1,
        le=MAX_LIMIT,
        description=f"Page size, 1 to {MAX_LIMIT}; values outside the range are refused (400), never clamped.",
    ),
]
ContinuationToken = Annotated[
    str | None,
    Parameter(
        query="continuationToken",
        min_length=1,
        max_length=1024,
        description="Opaque token from the previous page's `continuationToken`; bound to the same "
        "tenant, project, filters and endpoint.",
    ),
]
