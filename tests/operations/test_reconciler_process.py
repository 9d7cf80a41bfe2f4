"""The reconciler inside real ``jobgate worker`` processes: two workers started at once reconcile a
stale run once, under one housekeeping run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.storage.models import Job, OperationRun, PackRun, Source
from app.storage.tenants import add_tenant
from tests.operations.support import add_run

ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(loop_scope="session")
async def own_database(services, gateway_env):  # type: ignore[no-untyped-def]
    """A database of this test's own: real workers reconcile every workspace they see, which
    must not touch the rows (e.g. the demo workspaces) of the rest of the suite."""
    name = f"{services.database}_rp"
    admin = await asyncpg.connect(services.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = services.database_url.rpartition("/")[0] + f"/{name}"
    env = {**gateway_env, "JOBGATE_DATABASE_URL": url, "JOBGATE_REDIS_PREFIX": services.redis_prefix + "rp:"}
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "db", "upgrade"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    engine = create_async_engine(url)
    try:
        yield env, async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(services.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _worker(env: dict[str, str], claim_tenant: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1])
    process = subprocess.Popen(
        # --tenant: claim only an empty tenant's jobs, so the test's jobs are left to the reconciler
        [sys.executable, "-m", "app.cli", "worker", "--tenant", claim_tenant, "--concurrency", "1"],
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    return process, log


async def test_two_worker_processes_reconcile_a_stale_pack_run_once(own_database) -> None:  # type: ignore[no-untyped-def]
    env, sessions = own_database
    async with sessions.begin() as session:
        row = await add_tenant(session, "acme-rp", "ws-rp")
        await add_tenant(session, "idle-rp", "ws-rp")
    tenant = SimpleNamespace(id=row.id, workspace_id=row.workspace_id)
    runtime = SimpleNamespace(sessions=sessions)
    idle_tenant = "idle-rp"
    now = datetime.now(UTC)
    pack_run_id, source_id = uuid.uuid4().hex, uuid.uuid4().hex
    run_id = await add_run(
        runtime, tenant, status="running", age=7200, heartbeat_age=7200, context={"pack_run_id": pack_run_id}
    )
    async with runtime.sessions.begin() as session:
        session.add(
            Source(
                tenant_id=tenant.id,
                source_id=source_id,
                name="s",
                source_type="scanner",
                enabled=True,
                created_at=now,
                updated_at=now,
                jobs_submitted=1,
                jobs_active=1,
                jobs_failed=0,
            )
        )
        session.add(
            PackRun(
                tenant_id=tenant.id,
                pack_run_id=pack_run_id,
                pack_name="p",
                pack_version="1",
                status="running",
                operation_run_id=run_id,
                created_at=now,
                updated_at=now,
            )
        )
        session.add(
            Job(
                tenant_id=tenant.id,
                job_id=uuid.uuid4().hex,
                source_id=source_id,
                job_type="demo.sleep",
                payload={},
                status="running",
                run_after=now,
                pack_run_id=pack_run_id,
                created_at=now,
                updated_at=now,
                lease_owner="gone",
                lease_expires_at=now + timedelta(hours=1),
            )
        )

    workers = [_worker(env, idle_tenant) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        run = None
        while time.monotonic() < deadline:
            async with runtime.sessions() as session:
                run = await session.get(OperationRun, run_id)
            if run is not None and run.reconciled_at is not None:
                break
            for process, log in workers:
                assert process.poll() is None, log.read_text()[-2000:]
            await asyncio.sleep(0.2)
        assert run is not None and run.reconciled_at is not None, "the stale run was not reconciled in time"
    finally:
        for process, log in workers:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
            log.unlink(missing_ok=True)

    assert (run.status, run.outcome) == ("completed", "failed")
    assert run.reconciliation["source"] == "scheduled_reconciler"
    async with runtime.sessions() as session:
        housekeeping = (
            (
                await session.execute(
                    select(OperationRun).where(
                        OperationRun.workspace_id == tenant.workspace_id,
                        OperationRun.tenant_id.is_(None),
                        OperationRun.type == "ops.reconcile",
                    )
                )
            )
            .scalars()
            .all()
        )
        job = (await session.execute(select(Job).where(Job.pack_run_id == pack_run_id))).scalar_one()
        pack = await session.get(PackRun, (tenant.id, pack_run_id))
    assert [h.id for h in housekeeping] == [run.reconciliation["evidence"]["housekeeping_run_id"]]
    assert job.status == "canceled" and job.lease_owner is None
    assert pack.status == "failed"
