"""Helpers of the lifecycle tests: response validation against both contracts, and run rows."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml

from app.domain.operations.ledger import identity_hash
from app.storage.models import OperationRun

# The lifecycle contracts the gateway conforms to, kept in the repository (see its README).
SEEDS = Path(__file__).resolve().parents[2] / "contracts" / "reference"
SEED_FILES = ("operation-run-lifecycle.openapi.yaml", "operation-run-active-state.openapi.yaml")


def _nullable_to_31(node: Any) -> Any:
    """The seeds write OpenAPI 3.0's ``nullable: true`` inside 3.1 documents; JSON Schema spells
    it as a ``null`` type (and a ``null`` member of an enum)."""
    if isinstance(node, list):
        return [_nullable_to_31(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_31(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@functools.cache
def seed_documents() -> list[dict[str, Any]]:
    return [_nullable_to_31(yaml.safe_load((SEEDS / name).read_text())) for name in SEED_FILES]


@functools.cache
def project_document() -> dict[str, Any]:
    from app.cli import openapi_document

    return openapi_document()


def _response_schema(document: dict[str, Any], template: str) -> dict[str, Any] | None:
    operation = document.get("paths", {}).get(template, {}).get("get")
    if operation is None:
        return None
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return {**schema, "components": document.get("components", {})}


@functools.cache
def _validators(template: str) -> tuple[Any, ...]:
    schemas = [_response_schema(project_document(), template)]
    schemas += [s for s in (_response_schema(d, template) for d in seed_documents()) if s is not None]
    assert schemas[0] is not None, f"{template} is missing from the generated contract"
    assert len(schemas) == 2, f"{template} is missing from the seed contracts"
    return tuple(jsonschema_rs.validator_for(s) for s in schemas)


def assert_contract(template: str, body: Any) -> Any:
    """``body`` is valid under the generated contract and under the seed contract of ``template``."""
    for validator in _validators(template):
        validator.validate(body)
    return body


TEMPLATES = {
    "list": "/api/admin/operations",
    "detail": "/api/admin/operations/{operationRun}",
    "dashboard": "/admin/t/{tenant}/dashboard",
    "progress": "/admin/t/{tenant}/operations/progress",
    "canonical": "/admin/operations",
    "canonical_detail": "/admin/operations/{run}",
}


async def get_json(client: Any, kind: str, path: str, headers: dict[str, str], **params: Any) -> Any:
    response = await client.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "private, no-cache"
    assert response.headers["etag"]
    return assert_contract(TEMPLATES[kind], response.json())


async def tenant_of(runtime: Any, key: str) -> Any:
    info = await runtime.tenants.get(key)
    assert info is not None
    return info


async def add_run(
    runtime: Any,
    tenant: Any,
    *,
    status: str = "running",
    outcome: str = "pending",
    run_type: str = "pack_run.execute",
    age: float = 0,
    heartbeat_age: float | None = None,
    workspace_scoped: bool = False,
    project_id: str | None = None,
    now: datetime | None = None,
    **fields: Any,
) -> int:
    """One run row of ``tenant`` (or of its workspace), ``age`` seconds old."""
    now = now or datetime.now(UTC)
    created = now - timedelta(seconds=age)
    heartbeat = now - timedelta(seconds=heartbeat_age if heartbeat_age is not None else age)
    run = OperationRun(
        workspace_id=tenant.workspace_id,
        tenant_id=None if workspace_scoped else tenant.id,
        project_id=project_id,
        initiator_name="tester",
        type=run_type,
        status=status,
        outcome=outcome,
        run_identity_hash=identity_hash(run_type, {"nonce": fields.pop("nonce", None) or uuid.uuid4().hex}),
        summary_counts=fields.pop("summary_counts", {"total": 2}),
        failure_summary=fields.pop("failure_summary", []),
        context=fields.pop("context", {}),
        operator_message=fields.pop("operator_message", None),
        started_at=fields.pop("started_at", created if status != "queued" else None),
        heartbeat_at=fields.pop("heartbeat_at", heartbeat if status == "running" else None),
        completed_at=fields.pop("completed_at", now if status == "completed" else None),
        created_at=created,
        updated_at=now,
        **fields,
    )
    async with runtime.sessions.begin() as session:
        session.add(run)
        await session.flush()
        return run.id
