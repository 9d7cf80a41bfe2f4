"""The automatic ``OPTIONS`` answer: 204 with every method of the path in ``Allow``.

Litestar's own answer lists only the methods of the first handler registered for a path. The
answer reveals nothing, so it comes before authentication; an ``OPTIONS`` route a module declares
(with a scope) is left to the envelope like any other.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send


class AutomaticOptions:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS" or scope["route_handler"].opt.get("scope"):
            await self.app(scope, receive, send)
            return
        paths = scope["route_handler"].paths
        methods = {"OPTIONS"}
        for route in scope["app"].routes:
            if route.path in paths:
                methods.update(getattr(route, "methods", ()))
        headers = [(b"allow", ", ".join(sorted(methods)).encode())]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
