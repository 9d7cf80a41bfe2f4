"""The request class of the gateway: a JSON body must be sent as JSON.

Litestar reads a handler's ``data`` as JSON whatever the ``Content-Type`` says; a body under any
other media type (``text/plain``, a form, multipart) is refused with 415 ``unsupported_media_type``
before it is decoded. A request without a body never gets here.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException

JSON_MEDIA_TYPE = "application/json"


class GatewayRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        media_type = self.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            raise HTTPException(status_code=415, detail="Send the body as application/json.")
        return await super().json()
