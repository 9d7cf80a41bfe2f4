"""OpenAPI links from the routes that create something to the routes that use it.

Litestar does not derive links, so the contract gets them here, after generation. They tell a
client (and schemathesis' stateful phase) that the id in a create answer feeds the read, update
and action routes of that object. Targets are named by their generated ``operationId``, looked up
by path and method; every link is checked against the generated document (the source field in the
answer's schema, the target's path parameter), so a renamed field or route fails at start-up
instead of leaving a dead link in the contract.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Litestar
from litestar.openapi.spec import Link, OpenAPI, OpenAPIResponse, Operation, Reference, Schema


@dataclass(frozen=True)
class Follow:
    """From the ``status`` answer of ``source`` (method, path), its body field ``field`` names the
    ``parameter`` in the path of each ``targets`` operation."""

    source: tuple[str, str]
    status: str
    field: str
    parameter: str
    targets: tuple[tuple[str, str, str], ...]  # (link name, method, path)


LINKS = (
    Follow(
        ("POST", "/jobengine/sources"),
        "201",
        "sourceId",
        "sourceId",
        (
            ("GetSource", "GET", "/jobengine/sources/{sourceId}"),
            ("ReplaceSource", "PUT", "/jobengine/sources/{sourceId}"),
        ),
    ),
    Follow(
        ("POST", "/jobengine/quotas"),
        "201",
        "quotaId",
        "quotaId",
        (
            ("GetQuota", "GET", "/jobengine/quotas/{quotaId}"),
            ("ReplaceQuota", "PUT", "/jobengine/quotas/{quotaId}"),
            ("DeleteQuota", "DELETE", "/jobengine/quotas/{quotaId}"),
            ("PauseQuota", "POST", "/jobengine/quotas/{quotaId}/pause"),
            ("ResumeQuota", "POST", "/jobengine/quotas/{quotaId}/resume"),
        ),
    ),
    Follow(
        ("POST", "/jobengine/jobs"), "201", "jobId", "jobId", (("GetJob", "GET", "/jobengine/jobs/{jobId}"),)
    ),
    Follow(
        ("POST", "/jobengine/pack-runs"),
        "201",
        "packRunId",
        "packRunId",
        (
            ("GetPackRun", "GET", "/jobengine/pack-runs/{packRunId}"),
            ("CancelPackRun", "POST", "/jobengine/pack-runs/{packRunId}/cancel"),
            ("RetryPackRun", "POST", "/jobengine/pack-runs/{packRunId}/retry"),
        ),
    ),
    Follow(
        ("POST", "/jobengine/deadletter/{entryId}/replay"),
        "202",
        "jobId",
        "jobId",
        (("GetReplayJob", "GET", "/jobengine/jobs/{jobId}"),),
    ),
    Follow(
        ("POST", "/jobengine/deadletter/replay/pending"),
        "202",
        "operationRunId",
        "operationRun",
        (("GetOperationRun", "GET", "/api/admin/operations/{operationRun}"),),
    ),
    Follow(
        ("POST", "/jobengine/deadletter/replay/pending"),
        "202",
        "operationRunId",
        "operationRunId",
        (
            ("ChangeReplayRate", "PATCH", "/jobengine/deadletter/replays/{operationRunId}"),
            ("CancelReplay", "POST", "/jobengine/deadletter/replays/{operationRunId}/cancel"),
        ),
    ),
)


def _operation(document: OpenAPI, method: str, path: str) -> Operation:
    item = (document.paths or {}).get(path)
    operation = getattr(item, method.lower(), None) if item is not None else None
    if not isinstance(operation, Operation) or not operation.operation_id:
        raise ValueError(f"OpenAPI links: no operation {method} {path}")
    return operation


def _resolve(document: OpenAPI, schema: Schema | Reference | None) -> Schema | None:
    if isinstance(schema, Reference):
        name = schema.ref.rsplit("/", 1)[-1]
        return ((document.components.schemas or {}) if document.components else {}).get(name)
    return schema


def _check_field(document: OpenAPI, response: OpenAPIResponse, follow: Follow) -> None:
    media = (response.content or {}).get("application/json")
    schema = _resolve(document, media.schema if media is not None else None)
    if (
        schema is None
        or follow.field not in (schema.properties or {})
        or follow.field not in (schema.required or [])
    ):
        source = " ".join(follow.source)
        raise ValueError(
            f"OpenAPI links: the {follow.status} answer of {source} lacks the field {follow.field!r}"
        )


def _check_parameter(operation: Operation, method: str, path: str, name: str) -> None:
    if not any(
        getattr(p, "name", None) == name and getattr(p, "param_in", None) == "path"
        for p in operation.parameters or []
    ):
        raise ValueError(f"OpenAPI links: {method} {path} has no path parameter {name!r}")


def add_links(app: Litestar) -> None:
    """Add the links of :data:`LINKS` to the generated document (``app.openapi_schema``)."""
    document = app.openapi_schema
    for follow in LINKS:
        source = _operation(document, *follow.source)
        response = (source.responses or {}).get(follow.status)
        if response is None or isinstance(response, Reference):
            raise LookupError(f"OpenAPI links: {' '.join(follow.source)} documents no {follow.status} answer")
        _check_field(document, response, follow)
        links = dict(response.links or {})
        for name, method, path in follow.targets:
            target = _operation(document, method, path)
            _check_parameter(target, method, path, follow.parameter)
            links[name] = Link(
                operation_id=target.operation_id,
                parameters={f"path.{follow.parameter}": f"$response.body#/{follow.field}"},
                description=f"`{follow.field}` of the answer is the `{follow.parameter}` of {method} {path}.",
            )
        response.links = links
