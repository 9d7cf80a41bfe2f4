"""Finishing touches on the generated OpenAPI document that Litestar does not derive itself."""

from __future__ import annotations

import typing
from typing import Any, Iterator

import msgspec
from litestar import Litestar
from litestar.enums import ParamType
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
    SecurityScheme,
    Tag,
)

from app.http.routes import DPOP as DPOP_SCHEME_NAME
from app.storage.feed import KINDS
from app.security import header_rules


def _structs(annotation: Any, seen: set[type]) -> Iterator[type[msgspec.Struct]]:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        if annotation in seen:
            return
        seen.add(annotation)
        yield annotation
        hints = typing.get_type_hints(annotation, include_extras=True)
        for field in msgspec.structs.fields(annotation):
            yield from _structs(hints.get(field.name), seen)
        return
    for argument in typing.get_args(annotation):
        yield from _structs(argument, seen)


def close_strict_objects(app: Litestar) -> None:
    """Payloads that refuse unknown fields (``forbid_unknown_fields``) say so in the contract:
    ``additionalProperties: false``. Litestar leaves it out, and a fuzzer would then send extra
    fields and expect them to be accepted."""
    seen: set[type] = set()
    strict: set[str] = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            signature = handler.parsed_fn_signature
            annotations = [p.annotation for p in signature.parameters.values()]
            annotations.append(signature.return_type.annotation)
            for annotation in annotations:
                for struct in _structs(annotation, seen):
                    if struct.__struct_config__.forbid_unknown_fields:
                        strict.add(struct.__name__)
    schemas = app.openapi_schema.components.schemas or {}
    for name in strict:
        if name in schemas:
            schemas[name].additional_properties = False
    for struct in seen:  # what a payload states beyond its fields (``schema_extra``, a ClassVar)
        schema = schemas.get(struct.__name__)
        for key, value in getattr(struct, "schema_extra", {}).items():
            if schema is not None:
                setattr(schema, Schema.field_aliases().get(key, key), value)
    # The composition root calls this one function after generation: the rest follows here.
    finish_contract(app)


# -- the rest of the contract --------------------------------------------------------------------
#
# A client generated from the contract needs nothing hand-written: the DPoP scheme beside Bearer,
# the tags, the headers each answer carries, the conditional request headers, and query filters
# that are optional rather than nullable (an enum filter is a named component, so a generator
# makes one type of it). Litestar derives none of these; ``finish_contract`` adds them.

TAGS = (
    Tag(name="sources", description="Job sources: who submits jobs, and whether they may."),
    Tag(name="quotas", description="Per-jobType limits on concurrency and start rate; pause and resume."),
    Tag(name="jobs", description="Jobs: submission by job sources, reads, counts, why they wait, and cancel."),
    Tag(name="deadletter", description="Jobs that exhausted their attempts: reads, statistics and replays."),
    Tag(name="pack-runs", description="Ordered runs of job steps: submission, cancel and retry."),
    Tag(name="workers", description="The live worker processes that may run the tenant's jobs."),
    Tag(name="audit", description="The tenant's audit log of every mutating request, allowed or refused."),
    Tag(name="operations", description="Operation-run lifecycles: lists, details and the console surfaces."),
    Tag(name="events", description="The change feed: the tenant's changes as server-sent events (text/event-stream)."),
    Tag(name="health", description="Liveness, readiness and metrics; no credentials."),
)

DPOP_SCHEME = SecurityScheme(
    type="http",
    scheme="DPoP",
    description="DPoP-bound JWT (RFC 9449): `Authorization: DPoP <token>` with a `DPoP` proof header. "
    "The requirement lists the scope the token must grant.",
)

_STRING = Schema(type=OpenAPIType.STRING)
HEADERS = {
    "TraceId": OpenAPIHeader(
        schema=_STRING,
        description="The request's trace id: the X-Stella-Trace-Id it sent when valid, else a generated one",
    ),
    "ETag": OpenAPIHeader(
        schema=_STRING, description="Strong entity tag of this representation; send it back in If-None-Match "
        "(GET) or If-Match (PUT, DELETE)"
    ),
    "CacheControl": OpenAPIHeader(
        schema=_STRING,
        description="`private, max-age=60, stale-if-error=300` (console reads), `private, no-cache` (polled "
        "lifecycle reads) or `no-store`",
    ),
    "Vary": OpenAPIHeader(
        schema=_STRING, description="`Authorization, X-Stella-Tenant, X-Stella-Project, Origin` (merged with "
        "any other member)"
    ),
    "RetryAfter": OpenAPIHeader(
        schema=Schema(type=OpenAPIType.INTEGER, minimum=0), description="Seconds to wait before retrying"
    ),
    "Location": OpenAPIHeader(schema=_STRING, description="Absolute URL of the created or started object"),
    "IdempotentReplayed": OpenAPIHeader(
        schema=_STRING,
        description="`true` when this is the stored answer of an earlier request with the same Idempotency-Key",
    ),
}
IF_NONE_MATCH = Parameter(
    name="If-None-Match",
    param_in=ParamType.HEADER,
    required=False,
    schema=_STRING,
    description="ETags of a representation the client holds (`*` matches any); 304 without a body when "
    "one is current",
)
IF_MATCH = Parameter(
    name="If-Match",
    param_in=ParamType.HEADER,
    required=False,
    schema=_STRING,
    description="The ETag the change is based on (strong comparison); 412 `precondition_failed` when the "
    "object changed since. Without it the change is unconditional",
)
_NULL = OpenAPIType.NULL
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _header_parameter(name: str, description: str, *, required: bool = False, **rules: Any) -> Parameter:
    """A request header the pipeline reads and checks itself (authentication, the guards, the
    Idempotency-Key hook): documented here, so no handler declares (and re-validates) it."""
    if required:
        schema = Schema(type=OpenAPIType.STRING, description=description, **rules)
    else:
        schema = Schema(one_of=[_STRING, Schema(type=_NULL)], description=description, **rules)
    return Parameter(
        name=name, param_in=ParamType.HEADER, required=required, deprecated=False, description=description,
        schema=schema,
    )  # fmt: skip


# Every protected operation: the caller's headers; every mutation: the Idempotency-Key; an operator's
# mutation (not a submission): its reason and ticket.
CALLER_HEADERS = (
    _header_parameter(
        "X-Stella-Tenant",
        "Tenant key; must be granted by the token's tenant claim (byte-exact)",
        required=True,
        pattern=header_rules.TENANT_PATTERN,
    ),
    _header_parameter(
        "X-Stella-Project", "Narrows every read and write to this project", pattern=header_rules.PROJECT_PATTERN
    ),
    _header_parameter(
        "X-Stella-Trace-Id",
        "Echoed on the response; a new one is generated when absent or not 8-128 of [A-Za-z0-9._:-]",
    ),
)
OPERATOR_HEADERS = (
    _header_parameter(
        "X-Stella-Operator-Reason",
        "Why the operator acts: 1-512 printable characters (UTF-8), no control characters",
        required=True,
        max_length=header_rules.REASON_MAX,
        min_length=1,
        pattern=header_rules.REASON_PATTERN,
    ),
    _header_parameter(
        "X-Stella-Operator-Ticket",
        "Ticket id: 1-128 printable characters (UTF-8)",
        max_length=header_rules.TICKET_MAX,
        min_length=1,
        pattern=header_rules.TICKET_PATTERN,
    ),
)
IDEMPOTENCY_HEADER = _header_parameter(
    "Idempotency-Key",
    "Same key and request replays the first response; another request with the key is 422; while the "
    "first is in flight 409",
    pattern=header_rules.IDEMPOTENCY_KEY_PATTERN,
)


def _envelope_headers(handler: Any, operation: Operation) -> None:
    """The pipeline's request headers of a protected operation, after its path parameters."""
    if not handler.opt.get("scope"):
        return
    headers = list(CALLER_HEADERS)
    if _MUTATING & set(handler.http_methods):
        if not handler.opt.get("submission"):
            headers.extend(OPERATOR_HEADERS)
        headers.append(IDEMPOTENCY_HEADER)
    parameters = list(operation.parameters or [])
    after = sum(1 for p in parameters if getattr(p, "param_in", None) == ParamType.PATH)
    operation.parameters = [*parameters[:after], *headers, *parameters[after:]]


def _header(name: str) -> Reference:
    return Reference(ref=f"#/components/headers/{name}")


def _operations(app: Litestar) -> Iterator[tuple[Any, Operation]]:
    """Each route handler with its operation in the document (routes outside the schema skipped)."""
    paths = app.openapi_schema.paths or {}
    for route in app.routes:
        item = paths.get(route.path_format)
        if item is None:
            continue
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                operation = getattr(item, method.lower(), None)
                if isinstance(operation, Operation):
                    yield handler, operation


def _add_headers(response: OpenAPIResponse | Reference, *names: str) -> None:
    if isinstance(response, OpenAPIResponse):
        response.headers = {**(response.headers or {}), **{_NAMES[n]: _header(n) for n in names}}


_NAMES = {
    "TraceId": "X-Stella-Trace-Id",
    "ETag": "ETag",
    "CacheControl": "Cache-Control",
    "Vary": "Vary",
    "RetryAfter": "Retry-After",
    "Location": "Location",
    "IdempotentReplayed": "Idempotent-Replayed",
}


def _unsupported_media_type(operation: Operation) -> None:
    """An operation with a JSON body answers 415 when the body is sent under another media type."""
    if operation.request_body is not None and "415" not in (operation.responses or {}):
        operation.responses = {
            **(operation.responses or {}),
            "415": OpenAPIResponse(
                description="The body is not sent as `application/json` (`unsupported_media_type`)",
                content={
                    "application/problem+json": OpenAPIMediaType(
                        schema=Reference(ref="#/components/schemas/ProblemDetails")
                    )
                },
            ),
        }


def _document_headers(handler: Any, operation: Operation) -> None:
    responses = operation.responses or {}
    names = {getattr(p, "name", None) for p in operation.parameters or []}
    is_get = "GET" in handler.http_methods
    for status, response in responses.items():
        _add_headers(response, "TraceId")
        code = int(status)
        if code in (429, 503):
            _add_headers(response, "RetryAfter")
        if is_get and code == 200:
            _add_headers(response, "CacheControl", "Vary")
            if "304" in responses:
                _add_headers(response, "ETag")
        if not is_get and 200 <= code < 300 and code != 204:
            _add_headers(response, "ETag", "CacheControl")
        if code in handler.opt.get("location", ()):
            _add_headers(response, "Location")
        if "Idempotency-Key" in names and 200 <= code < 300:
            _add_headers(response, "IdempotentReplayed")
    parameters = list(operation.parameters or [])
    if is_get and "304" in responses:
        parameters.append(IF_NONE_MATCH)
    if "412" in responses:
        parameters.append(IF_MATCH)
    operation.parameters = parameters


def _not_null(schema: Schema) -> None:
    """An optional query parameter is left out, never sent as ``null``: drop the null branch."""
    if schema.one_of:
        kept = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == _NULL)]
        if len(kept) == 1 and isinstance(kept[0], Schema):
            schema.one_of = None
            schema.type = kept[0].type
    if schema.enum is not None and None in schema.enum:
        schema.enum = [v for v in schema.enum if v is not None]
    if isinstance(schema.type, (list, tuple)):
        kept_types = [t for t in schema.type if t != _NULL]
        schema.type = kept_types[0] if len(kept_types) == 1 else kept_types


def _shape_query(operation: Operation, enums: dict[str, Schema]) -> None:
    for parameter in operation.parameters or []:
        if not isinstance(parameter, Parameter) or parameter.param_in != ParamType.QUERY:
            continue
        schema = parameter.schema
        if not isinstance(schema, Schema):
            continue
        _not_null(schema)
        if schema.enum and schema.title:  # a named enum filter (``enum_query``)
            named = Schema(type=OpenAPIType.STRING, enum=list(schema.enum))
            if enums.setdefault(schema.title, named).enum != named.enum:
                raise ValueError(f"OpenAPI: two different enums are named {schema.title!r}")
            parameter.schema = Reference(ref=f"#/components/schemas/{schema.title}")


def _one_enum_or_null(schemas: dict[str, Any]) -> None:
    """A nullable enum property of a payload is "this enum, or null": Litestar writes an enum that
    also lists null, of which a generator builds several identical types."""
    for component in schemas.values():
        for key, prop in list((getattr(component, "properties", None) or {}).items()):
            if isinstance(prop, Schema) and prop.enum and None in prop.enum:
                component.properties[key] = Schema(
                    one_of=[
                        Schema(type=OpenAPIType.STRING, enum=[v for v in prop.enum if v is not None]),
                        Schema(type=_NULL),
                    ],
                    description=prop.description,
                )


CHANGE_EVENT = Schema(
    type=OpenAPIType.OBJECT,
    title="ChangeEventData",
    description="The `data:` of each `<kind>.changed` event of GET /jobengine/events (JSON on one line). The "
    "`id:` line of the event is the tenant's sequence, equal to `version`; an `event: reset` carries `{}`.",
    required=["kind", "id", "version", "at"],
    properties={
        "kind": Schema(type=OpenAPIType.STRING, enum=list(KINDS), description="What changed"),
        "id": Schema(type=OpenAPIType.STRING, description="The changed object's id (sourceId, jobId, entryId, …)"),
        "version": Schema(type=OpenAPIType.INTEGER, minimum=1, description="The tenant's sequence at this change"),
        "at": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME, description="When it was written"),
        "projectId": Schema(type=OpenAPIType.STRING, description="The object's project, when it has one"),
    },
    additional_properties=False,
)


def _stream_form(handler: Any, operation: Operation) -> None:
    """A route that also answers ``Accept: text/event-stream`` (``opt["vary"]`` names Accept) says
    so beside its JSON answer."""
    if "Accept" not in handler.opt.get("vary", ()) or handler.opt.get("stream"):
        return
    success = (operation.responses or {}).get("200")
    if isinstance(success, OpenAPIResponse) and success.content is not None:
        success.content["text/event-stream"] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.STRING,
                description="With Accept: text/event-stream: `event: snapshot` (data: the JSON answer), then "
                "`event: changed` (data: the new JSON answer) on every change; comment heartbeats every 15 s.",
            )
        )


def finish_contract(app: Litestar) -> None:
    document = app.openapi_schema
    components = document.components
    components.security_schemes = {**(components.security_schemes or {}), DPOP_SCHEME_NAME: DPOP_SCHEME}
    components.headers = {**(components.headers or {}), **HEADERS}
    document.tags = list(TAGS)
    enums: dict[str, Schema] = {}
    for handler, operation in _operations(app):
        _unsupported_media_type(operation)
        _envelope_headers(handler, operation)
        _document_headers(handler, operation)
        _shape_query(operation, enums)
        _stream_form(handler, operation)
    schemas = components.schemas or {}
    for name, schema in enums.items():
        if name in schemas:
            raise ValueError(f"OpenAPI: the enum {name!r} collides with a payload schema")
        schemas[name] = schema
    _one_enum_or_null(schemas)
    schemas["ChangeEventData"] = CHANGE_EVENT
    components.schemas = schemas
