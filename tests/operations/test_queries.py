"""The SQL translation of the derivation agrees with ``lifecycle.project`` row by row, including
the boundaries, so a filtered page holds exactly the runs the surfaces would show."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.domain.operations import queries
from app.domain.operations.lifecycle import RunFacts, project, reconcile_due
from app.storage.models import OperationRun
from app.thresholds import parse
from tests.operations.support import add_run, tenant_of

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TH = parse(
    '{"deadletter.replay_batch": {"queued_seconds": 30, "heartbeat_seconds": 20, "reconcile_after_seconds": 40},'
    ' "*": {"queued_seconds": 50, "heartbeat_seconds": 50, "reconcile_after_seconds": 60}}'
)


@pytest.fixture
async def grid(factory, runtime):  # type: ignore[no-untyped-def]
    """Runs of three types in every status, aged around each threshold."""
    tenant = await tenant_of(runtime, await factory.tenant())
    ages = [0, 19, 20, 21, 29, 30, 31, 39, 40, 41, 49, 50, 51, 59, 60, 61, 400]
    for run_type, age in itertools.product(
        ("deadletter.replay_batch", "custom.kind", "pack_run.execute"), ages
    ):
        await add_run(runtime, tenant, status="queued", run_type=run_type, age=age, now=NOW)
        await add_run(
            runtime, tenant, status="running", run_type=run_type, age=500, heartbeat_age=age, now=NOW
        )
        await add_run(
            runtime, tenant, status="running", run_type=run_type, age=age, now=NOW, heartbeat_at=None
        )
    await add_run(runtime, tenant, status="running", age=5, now=NOW, heartbeat_at=None, started_at=None)
    for outcome in ("succeeded", "failed", "blocked", "partially_succeeded"):
        await add_run(runtime, tenant, status="completed", outcome=outcome, age=5, now=NOW)
        await add_run(runtime, tenant, status="completed", outcome=outcome, age=5, now=NOW, reconciled_at=NOW)
    async with runtime.sessions() as session:
        rows = (
            (await session.execute(select(OperationRun).where(OperationRun.tenant_id == tenant.id)))
            .scalars()
            .all()
        )
    return tenant, {r.id: RunFacts.of(r) for r in rows}


async def _ids(runtime, tenant, condition):  # type: ignore[no-untyped-def]
    async with runtime.sessions() as session:
        stmt = select(OperationRun.id).where(OperationRun.tenant_id == tenant.id, condition)
        return set((await session.execute(stmt)).scalars())


@pytest.mark.parametrize("state", ["fresh_active", "likely_stale", "reconciled_failed", "terminal_normal"])
async def test_listed_freshness_filter_matches_the_projection(grid, runtime, state: str) -> None:  # type: ignore[no-untyped-def]
    tenant, runs = grid
    expected = {i for i, f in runs.items() if project(f, NOW, TH).listed_freshness == state}
    assert expected
    assert await _ids(runtime, tenant, queries.listed_freshness(state, NOW, TH)) == expected


@pytest.mark.parametrize("state", ["fresh_active", "likely_stale", "unknown"])
async def test_freshness_filter_matches_the_projection(grid, runtime, state: str) -> None:  # type: ignore[no-untyped-def]
    tenant, runs = grid
    expected = {i for i, f in runs.items() if project(f, NOW, TH).freshness_state == state}
    assert await _ids(runtime, tenant, queries.freshness(state, NOW, TH)) == expected


@pytest.mark.parametrize("name", ["none", "active_stale_attention", "terminal_follow_up"])
async def test_problem_class_filter_matches_the_projection(grid, runtime, name: str) -> None:  # type: ignore[no-untyped-def]
    tenant, runs = grid
    expected = {i for i, f in runs.items() if project(f, NOW, TH).problem_class == name}
    assert await _ids(runtime, tenant, queries.problem_class(name, NOW, TH)) == expected


@pytest.mark.parametrize("flag", [True, False])
async def test_reconciled_filter_matches_the_projection(grid, runtime, flag: bool) -> None:  # type: ignore[no-untyped-def]
    tenant, runs = grid
    expected = {i for i, f in runs.items() if project(f, NOW, TH).is_reconciled is flag}
    assert await _ids(runtime, tenant, queries.reconciled(flag)) == expected


async def test_reconcile_candidates_match_reconcile_due(grid, runtime) -> None:  # type: ignore[no-untyped-def]
    tenant, runs = grid
    expected = {i for i, f in runs.items() if reconcile_due(f, NOW, TH)}
    assert expected
    assert await _ids(runtime, tenant, queries.reconcile_due(NOW, TH)) == expected
    later = NOW + timedelta(seconds=1)
    assert await _ids(runtime, tenant, queries.reconcile_due(later, TH)) == {
        i for i, f in runs.items() if reconcile_due(f, later, TH)
    }
