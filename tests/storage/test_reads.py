"""List reads (app/storage/reads.py) return exactly what the session returns.

Each statement below runs both ways on the same rows of PostgreSQL: through ``ListReads.rows``
(compiled once, bound, fetched on the reads' asyncpg pool, result-processed) and through
``session.execute``. They cover every list's statement shapes (filters present or not, a
continuation key), expanding INs of several lengths, JSON, NULLs, booleans and instants. A
connection error answers 503, and the next read works.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from itertools import combinations
from typing import Any

import asyncpg
import pytest
from sqlalchemy import bindparam, func, select, text

from app.domain.audit import queries as audit
from app.domain.deadletter import service as deadletter
from app.domain.deadletter import summary as groups
from app.domain.jobs import service as jobs
from app.domain.packruns import service as packruns
from app.domain.quotas import service as quotas
from app.domain.sources import service as sources
from app.http.problems import to_problem
from app.runtime import Runtime
from app.settings import load_settings
from app.storage.models import Job, Source
from app.storage.pages import PageQuery
from app.storage.reads import SESSION_INFO_KEY, ListReads, read_rows
from tests.api.rows import NOW, at, tenant_rows
from tests.conftest import free_port

BACKEND_PID = select(func.pg_backend_pid())


@asynccontextmanager
async def own_runtime(gateway_env: dict[str, str], **overrides: str) -> AsyncIterator[Runtime]:
    """A runtime with a pool of its own (the shared runtime's pool must not keep a broken
    connection for later tests)."""
    runtime = Runtime.create(load_settings({**gateway_env, **overrides}))
    try:
        await runtime.list_reads.open()
        yield runtime
    finally:
        await runtime.stop()


async def driver_rows(runtime: Runtime, stmt: Any, params: dict[str, Any] | None = None) -> list[Any]:
    await runtime.list_reads.open()  # the shared runtime's, unless a served app opened it already
    rows = await runtime.list_reads.rows(stmt, params or {}, tuple)
    assert rows is not None
    return rows


async def _seed(runtime: Any, factory: Any) -> tuple[Any, dict[str, Any]]:
    _, rows = await tenant_rows(runtime, factory)
    await rows.add(
        *(rows.source(name=("a", "b", "a")[i % 3], project_id=(None, "p1")[i % 2], enabled=i % 3 != 0,
                      description=None if i % 2 else f"d{i}", last_job_at=None if i % 2 else at(i))
          for i in range(7)),
        *(rows.quota(f"type-{i}", paused=i % 2 == 0, paused_reason=None if i % 2 else "ops") for i in range(5)),
        *(rows.job(job_type=("scan", "export")[i % 2], status=("pending", "failed")[i % 2], created_at=at(i % 3),
                   payload={"n": i, "nested": {"list": [i, None, "x"]}}, project_id=(None, "p1")[i % 2],
                   pack_run_id=None if i % 3 else "pr-1")
          for i in range(9)),
        *(rows.entry(f"failed after {i} ms", dead_lettered_at=at(i % 4), category=("transient", "policy")[i % 2],
                     error_code=("E1", "E2", "E3")[i % 3], status=("pending", "replayed")[i % 2])
          for i in range(10)),
        *(rows.pack_run(status=("queued", "failed")[i % 2], pack_name=("p", "q")[i % 2], created_at=at(i % 2))
          for i in range(5)),
        *(rows.audit(occurred_at=at(i % 3), subject=("tester", "alice")[i % 2], target=("q-1", None)[i % 2],
                     project_id=(None, "p1")[i % 3 == 0])
          for i in range(6)),
    )
    values = {
        "tenant": rows.tenant_id,
        "project": "p1",
        "sourceType": "scanner",
        "enabled": True,
        "jobType": "scan",
        "paused": True,
        "status": "pending",
        "sourceId": "src-a",
        "packRunId": "pr-1",
        "packName": "p",
        "category": "transient",
        "errorCode": "E1",
        "action": "quota.pause",
        "subject": "tester",
        "target": "q-1",
        "from": at(1),
        "to": NOW + timedelta(days=1),
    }
    return rows, values


def _shapes(query: PageQuery, names: list[str]) -> list[tuple[frozenset[str], bool]]:
    """Every shape with at most two optional filters, with and without a continuation key."""
    subsets = [frozenset(c) for n in range(3) for c in combinations(names, n)]
    return [(present, continued) for present in subsets for continued in (False, True)]


LISTS = [
    (sources.LIST, ["project", "sourceType", "enabled"], ["b", "zzz"]),
    (quotas.LIST, ["jobType", "paused"], ["type-1", "zzz"]),
    (jobs.LIST, ["project", "status", "jobType", "sourceId", "packRunId"], [at(2), "zzz"]),
    (deadletter.LIST, ["project", "jobType", "category", "errorCode", "status", "from", "to"], [at(3), "zzz"]),
    (groups.SUMMARY, ["project"], ["policy", "E1"]),
    (packruns.LIST, ["project", "status", "packName"], [at(1), "zzz"]),
    (audit.LIST, ["project", "action", "subject", "target", "from", "to"], [NOW + timedelta(days=1), 10**9]),
]


@pytest.fixture
async def both(runtime):  # type: ignore[no-untyped-def]
    """Runs a statement through the driver and through the session; returns both row lists."""
    async def run(stmt: Any, params: dict[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
        driver = await driver_rows(runtime, stmt, params)
        async with runtime.sessions() as session:
            plain = [tuple(row) for row in await session.execute(stmt, params)]
        return driver, plain

    return run


@pytest.mark.parametrize("query,names,after", LISTS, ids=lambda v: getattr(v, "__name__", None))
async def test_every_list_shape_reads_the_same_rows_with_the_driver_as_with_the_session(
    runtime, factory, both, query, names, after
):
    _, values = await _seed(runtime, factory)
    nonempty = 0
    for present, continued in _shapes(query, names):
        stmt, _ = query.statement(present, continued)
        params = {"tenant": values["tenant"], **{name: values[name] for name in present}, "page_rows": 50}
        if continued:
            params.update((f"after_{i}", value) for i, value in enumerate(after))
        driver, plain = await both(stmt, params)
        assert driver == plain, (present, continued)
        nonempty += bool(plain)
    assert nonempty >= 2  # the comparison saw real rows, not only empty pages


async def test_statements_built_per_request_read_the_same_rows_whatever_their_values(runtime, factory, both):
    rows, _ = await _seed(runtime, factory)
    other, _ = await _seed(runtime, factory)
    lists = ([rows.tenant_id], [other.tenant_id], [rows.tenant_id, other.tenant_id], [other.tenant_id, -1, -2])
    for tenant_ids in lists:
        # An expanding IN (its SQL differs with the list's length, its values with each list of a
        # length), JSON, NULLs and instants.
        stmt = (
            select(Job.tenant_id, Job.job_id, Job.payload, Job.pack_run_id, Job.created_at)
            .where(Job.tenant_id.in_(tenant_ids), Job.created_at >= at(1))
            .order_by(Job.tenant_id, Job.job_id)
        )
        driver, plain = await both(stmt)
        assert driver == plain and driver
        assert isinstance(driver[0][2], dict) and driver[0][4].tzinfo is not None
    grouped = (
        select(Source.name, func.count().label("n"), func.max(Source.last_job_at), func.bool_and(Source.enabled))
        .where(Source.tenant_id == rows.tenant_id)
        .group_by(Source.name)
        .order_by(Source.name)
    )
    driver, plain = await both(grouped)
    assert driver == plain and len(driver) == 2


async def test_instants_arrive_in_utc_without_conversion_whatever_the_session_time_zone(runtime, factory):
    """On asyncpg the instants' type converts nothing (``UTCDateTime.result_processor``): the
    driver itself answers every timestamptz as an aware datetime in UTC, also where the
    connection's TimeZone is another."""
    rows, _ = await _seed(runtime, factory)
    dialect = runtime.engine.dialect
    assert Source.__table__.c.created_at.type.dialect_impl(dialect).result_processor(dialect, None) is None
    stmt = select(Source.created_at, Source.last_job_at).where(Source.tenant_id == rows.tenant_id)
    # A server setting in the DSN applies to every connection of the reads' pool.
    reads = ListReads(runtime.list_reads.dsn + "?timezone=Asia%2FKolkata", dialect, size=1)
    await reads.open()
    try:
        assert await reads.rows(select(text("current_setting('TimeZone')")), {}, tuple) == [("Asia/Kolkata",)]
        driver = await reads.rows(stmt, {}, tuple)
    finally:
        await reads.close()
    async with runtime.sessions() as session:
        await session.execute(text("SET TIME ZONE 'America/Los_Angeles'"))
        plain = [tuple(row) for row in await session.execute(stmt)]
    instants = [value for row in driver + plain for value in row if value is not None]
    assert driver == plain and len(instants) > len(driver)
    assert all(value.tzinfo is UTC for value in instants)


async def test_rows_are_made_by_the_given_callable_on_both_paths(runtime, factory):
    rows, _ = await _seed(runtime, factory)
    stmt = (
        select(Source.source_id, Source.name)
        .where(Source.tenant_id == bindparam("tenant"))
        .order_by(Source.source_id)
    )
    async with runtime.read_sessions() as session:
        driver = await read_rows(session, stmt, {"tenant": rows.tenant_id}, make=list)
    async with runtime.sessions() as session:
        plain = await read_rows(session, stmt, {"tenant": rows.tenant_id}, make=list)
    assert driver == plain and len(driver) == 7 and all(type(row) is list for row in driver + plain)


async def test_a_session_inside_a_transaction_reads_its_own_writes_on_the_session(runtime, factory):
    rows, _ = await _seed(runtime, factory)
    stmt = select(Source.source_id).where(Source.tenant_id == bindparam("tenant"), Source.name == "uncommitted")
    params = {"tenant": rows.tenant_id}
    async with runtime.sessions() as session:
        session.add(rows.source(name="uncommitted", source_id="src-uncommitted"))
        await session.flush()
        assert await read_rows(session, stmt, params) == [("src-uncommitted",)]
        await session.rollback()
    async with runtime.read_sessions() as session:
        assert await read_rows(session, stmt, params) == []


async def test_read_sessions_carry_the_list_reads_on_postgresql(runtime):
    async with runtime.read_sessions() as session:
        assert isinstance(session.info.get(SESSION_INFO_KEY), ListReads)
    async with runtime.sessions() as session:  # writes never read beside their transaction
        assert SESSION_INFO_KEY not in session.info


async def test_a_refused_value_is_a_400_and_the_pool_stays_usable(runtime, factory):
    rows, _ = await _seed(runtime, factory)
    with pytest.raises(asyncpg.PostgresError) as refused:
        await driver_rows(runtime, select(Source).where(Source.name == "nul\x00"))
    assert to_problem(refused.value).status == 400
    assert len(await driver_rows(runtime, select(Source.source_id).where(Source.tenant_id == rows.tenant_id))) == 7


async def test_a_dropped_connection_is_replaced_and_never_a_500(gateway_env, services):
    # One connection in the reads' pool: the terminated one is the next handed out.
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="2") as runtime:
        (first,), = await driver_rows(runtime, BACKEND_PID)
        admin = await asyncpg.connect(services.pg_url)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        # The pool usually notices the closed connection before handing it out; a read that gets
        # it first answers 503 (never 500), and the next read has a new connection.
        try:
            await driver_rows(runtime, BACKEND_PID)
        except Exception as dropped:  # noqa: BLE001
            assert to_problem(dropped).status == 503, repr(dropped)
        (second,), = await driver_rows(runtime, BACKEND_PID)
        assert second != first


async def _starting_up_server() -> tuple[asyncio.Server, int]:
    """A server that answers every PostgreSQL connection as one starting up does (57P03)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length = int.from_bytes(await reader.readexactly(4), "big")
            body = await reader.readexactly(length - 4)
            if body[:4] == (80877103).to_bytes(4, "big"):  # SSLRequest: no TLS here
                writer.write(b"N")
                length = int.from_bytes(await reader.readexactly(4), "big")
                await reader.readexactly(length - 4)
            fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
            writer.write(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("kind", ["starting up", "refused"])
async def test_a_database_that_cannot_take_connections_is_a_503(gateway_env, kind):
    server, port = await _starting_up_server() if kind == "starting up" else (None, free_port())
    credentials, _, rest = gateway_env["JOBGATE_DATABASE_URL"].rpartition("@")
    url = f"{credentials}@127.0.0.1:{port}/{rest.split('/', 1)[1]}"
    try:
        async with own_runtime(gateway_env, JOBGATE_DATABASE_URL=url) as runtime:
            with pytest.raises(Exception) as failed:
                await driver_rows(runtime, select(func.now()))
        assert to_problem(failed.value).status == 503, repr(failed.value)
    finally:
        if server is not None:
            server.close()


async def test_an_interrupted_read_stops_its_statement_and_the_next_read_works(gateway_env):
    async with own_runtime(gateway_env, JOBGATE_DATABASE_POOL_SIZE="2") as runtime:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(driver_rows(runtime, select(func.pg_sleep(30))), 0.2)
        # The one connection of the reads' pool answers the next read with its own rows, and the
        # interrupted statement no longer runs on the server.
        running = (
            select(func.count())
            .select_from(text("pg_stat_activity"))
            .where(text("query LIKE '%pg_sleep(%' AND state = 'active' AND pid <> pg_backend_pid()"))
        )
        assert await driver_rows(runtime, running) == [(0,)]


async def test_every_operation_run_list_shape_reads_the_same_rows(runtime, factory, both):
    from app.domain.operations import routes as operations
    from tests.operations.support import add_run, tenant_of

    key = await factory.tenant()
    tenant = await tenant_of(runtime, key)
    for i in range(8):
        status = ("running", "queued", "completed")[i % 3]
        await add_run(
            runtime, tenant, status=status, outcome=("pending", "pending", "failed")[i % 3], age=60 * i,
            workspace_scoped=i == 5, project_id="p1" if i % 2 else None,
            reconciled_at=at(i) if status == "completed" and i % 2 else None,
        )
    values = {
        "workspace": tenant.workspace_id, "project": "p1", "status": "completed", "outcome": "failed",
        "type": "pack_run.execute", "tenant_id": tenant.id, "reconciled": True, "unreconciled": True,
    }
    names = ["project", "status", "outcome", "type", "tenant_id", "reconciled", "unreconciled"]
    nonempty = 0
    for present, continued in _shapes(operations.LIST, names):
        # The expanding IN of the visible tenants: two lengths, two lists of each length.
        for tenants in ([tenant.id], [-1], [tenant.id, -1, -2], [-2, -1, tenant.id]):
            stmt, _ = operations.LIST.statement(present, continued)
            params = {"workspace": values["workspace"], "tenants": tenants, "page_rows": 50,
                      **{name: values[name] for name in present}}
            if continued:
                params.update(after_0=NOW + timedelta(days=1), after_1=2**62)
            driver, plain = await both(stmt, params)
            assert driver == plain, (present, continued, tenants)
            nonempty += bool(plain)
    assert nonempty >= 10


async def test_a_gateway_splits_its_connection_budget_and_a_worker_takes_all_of_it(gateway_env):
    settings = load_settings({**gateway_env, "JOBGATE_DATABASE_POOL_SIZE": "8"})
    gateway, worker = Runtime.create(settings), Runtime.create(settings, list_reads=False)
    try:
        assert (gateway.engine.sync_engine.pool.size(), gateway.list_reads.size) == (4, 4)
        assert worker.engine.sync_engine.pool.size() == 8 and worker.list_reads is None
    finally:
        await gateway.stop()
        await worker.stop()
