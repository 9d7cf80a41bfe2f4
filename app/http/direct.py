"""Direct reads: a read route's handler called by the envelope, past the framework's per-request
machinery, for the requests that machinery would only pass through.

A list page costs the database a fraction of a millisecond; for the framework, a handler with
dependencies costs about as much again: the request object, the dependency graph (the caller's
provider and its header parameters, the session's generator), the signature model's validation
of every argument, the response object and its conversion. For a read whose handler takes only
the request, the read session, the caller and query or path parameters of plain types (``int``,
``bool``, ``str``, string ``Literal``\\ s, each optional, with length and range bounds), a
:class:`DirectRead` is planned once from the route's own declarations, and for each request:

* reads the query string as the framework does (:func:`litestar._parsers.parse_query_string`) and
  takes a value only in its canonical form: an ``int`` in plain decimal within its bounds, a
  ``bool`` as ``true`` or ``false``, a string within its lengths, a ``Literal`` as one of its
  values. Anything else (another spelling, a repeated, empty or unknown parameter, a value out
  of bounds) is left to the framework, which answers it exactly as before: its 400, its reading
  of ``paused=1``. Nothing has been done for the request by then but the envelope's own checks,
  which the framework's path does not repeat;
* calls the route's handler with the values, the caller the envelope established and a read
  session (:func:`app.http.mutation.read_session`, as the framework's provider does);
* answers its content as :class:`app.http.caching.GatewayResponse` does (:func:`conditional`):
  the same bytes, ``ETag``, ``304`` and headers.

A problem the handler raises propagates as from the framework's path, to the same exception
handler. ``tests/http/test_direct.py`` holds every planned route's answers equal to the
framework's, bytes and headers, for accepted and refused queries alike.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from litestar import Litestar, MediaType, Request
from litestar._parsers import parse_query_string
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg
from litestar.types import Empty, Receive, Scope, Send

from app.http.caching import GatewayResponse, conditional
from app.http.mutation import provide_caller, provide_session, read_session
from app.http.tracing import header_values
from app.security.caller import CALLER_KEY

# Plain decimal without sign or leading zero: the spelling every client sends; msgspec would
# also refuse "+5" and "05", but whether it reads " 5" or "5_0" is its business, not ours.
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]{0,17})\Z")
_BOOLEANS = {"true": True, "false": False}
# ParameterKwarg's constraints a direct read checks itself; a parameter with any other is left
# to the framework whenever a request sends it.
_CHECKED = frozenset({"ge", "le", "gt", "lt", "min_length", "max_length"})
_DOCUMENTATION = frozenset({
    "name", "annotation", "header", "cookie", "query", "title", "description", "examples", "external_docs",
    "content_encoding", "required", "default", "schema_extra", "schema_component_key", "include_in_schema",
})  # fmt: skip


class Unusual(Exception):
    """A request the framework's own path answers."""


Parse = Callable[[Any], Any]


def _unusual(_: Any) -> Any:
    raise Unusual


def _bounded(kwarg: ParameterKwarg | None) -> Callable[[Any], bool]:
    if kwarg is None:
        return lambda _: True
    ge, le, gt, lt = kwarg.ge, kwarg.le, kwarg.gt, kwarg.lt
    lo, hi = kwarg.min_length, kwarg.max_length

    def within(value: Any) -> bool:
        if isinstance(value, str):
            return (lo is None or len(value) >= lo) and (hi is None or len(value) <= hi)
        return (
            (ge is None or value >= ge)
            and (le is None or value <= le)
            and (gt is None or value > gt)
            and (lt is None or value < lt)
        )

    return within


def _constraints_checked(kwarg: ParameterKwarg | None) -> bool:
    if kwarg is None:
        return True
    return all(
        getattr(kwarg, field.name) in (None, Empty, False)
        for field in dataclasses.fields(kwarg)
        if field.name not in _CHECKED and field.name not in _DOCUMENTATION
    )


def _parser(annotation: Any, kwarg: ParameterKwarg | None, *, from_path: bool) -> Parse | None:
    """How one parameter's value is read (raising :class:`Unusual` for anything non-canonical),
    or None where the annotation is not a plain type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) != 1:
            return None
        annotation = kinds[0]
    if not _constraints_checked(kwarg):
        return _unusual
    within = _bounded(kwarg)
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        if not all(isinstance(v, str) for v in values):
            return None
        allowed = frozenset(values)

        def literal(text: Any) -> Any:
            if text not in allowed:
                raise Unusual
            return text

        return literal
    if annotation is bool and not from_path:
        return lambda text: _BOOLEANS[text] if text in _BOOLEANS else _unusual(text)
    if annotation is int:

        def integer(text: Any) -> Any:
            if from_path:
                value = text if type(text) is int else _unusual(text)  # converted by the router
            elif not _DECIMAL.match(text):
                raise Unusual
            else:
                value = int(text)
            if not within(value):
                raise Unusual
            return value

        return integer
    if annotation is str:

        def string(text: Any) -> Any:
            if type(text) is not str or not text or not within(text):
                raise Unusual
            return text

        return string
    return None


@dataclass(frozen=True, slots=True)
class _Query:
    key: str
    name: str
    parse: Parse
    default: Any


class DirectRead:
    """One read route's handler, called with what its declarations ask for (see the module)."""

    def __init__(
        self,
        handler: HTTPRouteHandler,
        queries: list[_Query],
        paths: dict[str, Parse],
        takes_request: bool,
        takes_session: bool,
        takes_caller: bool,
    ) -> None:
        self.fn: Callable[..., Awaitable[Any]] = handler.fn  # type: ignore[assignment]
        self.policy: str = handler.opt.get("cache", "console")
        self.queries = {q.key: q for q in queries}
        self.defaults = {q.name: q.default for q in queries}
        self.paths = paths
        self.takes_request = takes_request
        self.takes_session = takes_session
        self.takes_caller = takes_caller

    def arguments(self, scope: Scope) -> dict[str, Any]:
        """The handler's arguments from the query string and path, or :class:`Unusual`."""
        kwargs = dict(self.defaults)
        seen: set[str] = set()
        for key, text in parse_query_string(scope.get("query_string", b"")):
            query = self.queries.get(key)
            if query is None or key in seen:
                raise Unusual
            seen.add(key)
            kwargs[query.name] = query.parse(text)
        if self.paths:
            given = scope["path_params"]
            for name, parse in self.paths.items():
                kwargs[name] = parse(given[name])
        return kwargs

    async def answer(
        self, scope: Scope, receive: Receive, send: Send, *, otherwise: Callable[[Scope, Receive, Send], Awaitable[int]]
    ) -> int:
        """Answer the request, or leave an unusual one to ``otherwise`` (the framework's path);
        the status sent."""
        try:
            if scope["method"] != "GET":
                raise Unusual
            kwargs = self.arguments(scope)
            if_none_match = _if_none_match(scope)
        except Unusual:
            return await otherwise(scope, receive, send)
        if self.takes_request:
            kwargs["request"] = Request(scope, receive, send)
        if self.takes_caller:
            kwargs["caller"] = scope["state"][CALLER_KEY]
        if self.takes_session:
            async with read_session(scope["litestar_app"].state.runtime, "GET") as session:
                content = await self.fn(session=session, **kwargs)
        else:
            content = await self.fn(**kwargs)
        body, validators = conditional(content, self.policy, if_none_match)
        headers = [(name.lower().encode(), value.encode()) for name, value in validators.items()]
        if body is None:
            status, body = 304, b""
        else:  # as the framework's response adds them
            status = 200
            headers += ((b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return status


def _if_none_match(scope: Scope) -> str | None:
    """The one ``If-None-Match`` header, or None; several are left to the framework's reading."""
    found = header_values(scope, b"if-none-match")
    if len(found) > 1:
        raise Unusual
    return found[0].decode("latin-1") if found else None


# The dependencies a direct read provides itself; the caller's provider only declares, for the
# contract, the headers the envelope has already checked.
_PROVIDED = {"session": provide_session, "caller": provide_caller}


def plan(handler: HTTPRouteHandler, path_parameters: set[str]) -> DirectRead | None:
    """The direct read of ``handler``, or None where its declarations ask for more than it gives."""
    if (
        handler.http_methods != {"GET"}
        or not handler.opt.get("scope")
        or handler.status_code != 200
        or handler.resolve_guards()
        or handler.resolve_before_request()
        or any(layer.after_request for layer in handler.ownership_layers)
        or handler.resolve_return_dto()
        or handler.media_type not in (MediaType.JSON, MediaType.JSON.value)
        or handler.resolve_after_response()
        or handler.resolve_response_headers()
        or handler.resolve_response_cookies()
        or handler.background is not None
        or handler.cache
        or handler.resolve_response_class() is not GatewayResponse
        or handler.has_sync_callable
    ):
        return None
    returns = handler.parsed_fn_signature.return_type.annotation
    if not (isinstance(returns, type) and issubclass(returns, msgspec.Struct)):
        return None
    dependencies = handler.resolve_dependencies()
    queries: list[_Query] = []
    paths: dict[str, Parse] = {}
    takes = {"request": False, "session": False, "caller": False}
    for name, field in handler.parsed_fn_signature.parameters.items():
        if name == "request":
            takes["request"] = True
            continue
        if name in dependencies:
            if _PROVIDED.get(name) is not dependencies[name].dependency:
                return None
            takes[name] = True
            continue
        kwarg = field.kwarg_definition
        if kwarg is not None and not isinstance(kwarg, ParameterKwarg):
            return None
        if kwarg is not None and (kwarg.header or kwarg.cookie):
            return None
        parse = _parser(field.annotation, kwarg, from_path=name in path_parameters)
        if parse is None:
            return None
        if name in path_parameters:
            paths[name] = parse
            continue
        if field.default is Empty:
            return None
        queries.append(_Query((kwarg.query if kwarg is not None else None) or name, name, parse, field.default))
    return DirectRead(handler, queries, paths, takes["request"], takes["session"], takes["caller"])


def plan_all(app: Litestar) -> dict[HTTPRouteHandler, DirectRead]:
    """The direct read of every route that has one, by route handler."""
    planned: dict[HTTPRouteHandler, DirectRead] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            direct = plan(handler, set(route.path_parameters))
            if direct is not None:
                planned[handler] = direct
    return planned
