"""Finishing touches on the generated OpenAPI document that Litestar does not derive itself."""

from __future__ import annotations

import typing
from typing import Any, Iterator

import msgspec
from litestar import Litestar


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
