"""Active-run dedupe: the partial unique indexes refuse a second active run of one identity, and
the ledger turns that refusal into "return the existing run"."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from app.domain.operations import ledger
from app.storage.models import OperationRun
from tests.operations.support import tenant_of


def _row(tenant, digest: str, *, status: str = "running", workspace_scoped: bool = False) -> OperationRun:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return OperationRun(
        workspace_id=tenant.workspace_id,
        tenant_id=None if workspace_scoped else tenant.id,
        type="test.dedupe",  # a type no worker step picks up
        status=status,
        outcome="pending" if status != "completed" else "succeeded",
        run_identity_hash=digest,
        summary_counts={},
        failure_summary=[],
        context={},
        created_at=now,
        updated_at=now,
    )


@pytest.mark.parametrize("workspace_scoped", [False, True], ids=["tenant", "workspace"])
async def test_partial_unique_index_rejects_a_second_active_run(
    factory, runtime, workspace_scoped: bool
) -> None:  # type: ignore[no-untyped-def]
    tenant = await tenant_of(runtime, await factory.tenant())
    digest = "d" * 40 + tenant.key[-12:] + ("w" if workspace_scoped else "t") * 12
    async with runtime.sessions.begin() as session:
        session.add(_row(tenant, digest, workspace_scoped=workspace_scoped))
    with pytest.raises(IntegrityError, match="uq_operation_runs_"):
        async with runtime.sessions.begin() as session:
            session.add(_row(tenant, digest, status="queued", workspace_scoped=workspace_scoped))
    # completed runs of the same identity are not constrained
    async with runtime.sessions.begin() as session:
        session.add(_row(tenant, digest, status="completed", workspace_scoped=workspace_scoped))
        session.add(_row(tenant, digest, status="completed", workspace_scoped=workspace_scoped))


async def test_same_identity_in_another_tenant_is_another_run(factory, runtime) -> None:  # type: ignore[no-untyped-def]
    a, b = await tenant_of(runtime, await factory.tenant()), await tenant_of(runtime, await factory.tenant())
    digest = "e" * 64
    async with runtime.sessions.begin() as session:
        session.add(_row(a, digest))
        session.add(_row(b, digest))


async def test_open_run_returns_the_active_run_of_the_same_identity(factory, runtime) -> None:  # type: ignore[no-untyped-def]
    tenant = await tenant_of(runtime, await factory.tenant())
    kwargs = {
        "run_type": "deadletter.replay_pending",
        "workspace_id": tenant.workspace_id,
        "tenant_id": tenant.id,
        "identity": {"filter": {"errorCode": "x"}},
    }
    async with runtime.sessions.begin() as session:
        first = await ledger.open_run(session, **kwargs)
    async with runtime.sessions.begin() as session:
        again = await ledger.open_run(session, **kwargs)
        other = await ledger.open_run(session, **{**kwargs, "identity": {"filter": {"errorCode": "y"}}})
    assert first.created and not again.created and other.created
    assert again.run.id == first.run.id and other.run.id != first.run.id
    async with runtime.sessions.begin() as session:
        run = await session.get(OperationRun, first.run.id)
        ledger.complete(run, "succeeded")
    async with runtime.sessions.begin() as session:
        after = await ledger.open_run(session, **kwargs)
        assert after.created and after.run.id != first.run.id
        # leave nothing active for the replay step of other tests' workers (these runs have no filter)
        for run_id in (other.run.id, after.run.id):
            ledger.complete(await session.get(OperationRun, run_id), "succeeded")


async def test_per_request_types_never_deduplicate(factory, runtime) -> None:  # type: ignore[no-untyped-def]
    tenant = await tenant_of(runtime, await factory.tenant())
    kwargs = {
        "run_type": "deadletter.replay_batch",
        "workspace_id": tenant.workspace_id,
        "tenant_id": tenant.id,
        "identity": {"entry_ids": ["a", "b"]},
    }
    async with runtime.sessions.begin() as session:
        first = await ledger.open_run(session, **kwargs)
        second = await ledger.open_run(session, **kwargs)
    assert first.created and second.created and first.run.id != second.run.id


def test_summary_counts_keep_only_catalogue_keys() -> None:
    assert ledger.normalise_counts(
        {"total": 3, "processed": 2.0, "secret": 1, "failed": -1, "skipped": True}
    ) == {
        "total": 3,
        "processed": 2,
    }


def test_failure_items_are_sanitised() -> None:
    item = ledger.failure_item(
        "run.failed", "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl by ops@example.com"
    )
    assert item["code"] == "run.failed"
    assert "eyJhbGciOiJIUzI1NiJ9" not in item["message"] and "ops@example.com" not in item["message"]
