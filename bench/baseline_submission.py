"""The write ceiling: a bare Litestar app, no authentication, raw asyncpg, the gateway's writes.

``POST /jobengine/jobs`` decodes the same body, and in one transaction counts the job on its
source (``UPDATE … RETURNING``), inserts the job row and an audit row, and answers the job as
JSON with 201, as the gateway does. ``POST /jobengine/jobs/batch`` does the same for a batch
of jobs with one statement each (``INSERT … SELECT FROM unnest``). Whatever the gateway spends
beyond this app is the price of its envelope (authentication, rate limit, scope, idempotency)
and its layers.

Configured by environment: ``BENCH_PG_DSN`` (asyncpg DSN), ``BENCH_TENANT_ID`` (tenants.id).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, post
from litestar.datastructures import State

TAKE_SOURCE = (
    "UPDATE sources SET jobs_submitted = jobs_submitted + $3, last_job_at = $4 "
    "WHERE tenant_id = $1 AND source_id = $2 RETURNING project_id, enabled"
)
INSERT_JOB = (
    "INSERT INTO jobs (tenant_id, job_id, project_id, source_id, job_type, payload, priority, status, attempt, "
    "max_attempts, run_after, cancel_requested, created_at, updated_at) "
    "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, 'pending', 0, $8, $9, false, $9, $9)"
)
INSERT_JOBS = (
    "INSERT INTO jobs (tenant_id, job_id, project_id, source_id, job_type, payload, priority, status, attempt, "
    "max_attempts, run_after, cancel_requested, created_at, updated_at) "
    "SELECT $1, j, $2, $3, t, p::jsonb, pr, 'pending', 0, m, $4, false, $4, $4 "
    "FROM unnest($5::text[], $6::text[], $7::text[], $8::int[], $9::int[]) AS u(j, t, p, pr, m)"
)
INSERT_AUDIT = (
    "INSERT INTO audit_log (occurred_at, tenant_id, project_id, subject, client_id, action, method, route, target, "
    "reason, ticket, trace_id, idempotency_key, result_status, result_code) "
    "VALUES ($1, $2, NULL, 'bench', 'bench', $3, 'POST', $4, $5, NULL, NULL, $6, NULL, $7, NULL)"
)


class JobSubmit(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    job_type: str
    source_id: str
    payload: dict[str, Any] = {}
    priority: int = 0
    max_attempts: int = 3
    run_after: datetime | None = None


class JobBatch(msgspec.Struct, forbid_unknown_fields=True):
    jobs: list[JobSubmit]


class JobView(msgspec.Struct, rename="camel"):
    job_id: str
    job_type: str
    source_id: str
    project_id: str | None
    status: str
    priority: int
    attempt: int
    max_attempts: int
    payload: dict[str, Any]
    run_after: datetime
    lease_owner: None
    lease_expires_at: None
    heartbeat_at: None
    pack_run_id: None
    replay_of_entry_id: None
    last_error_code: None
    last_error_category: None
    last_error_message: None
    created_at: datetime
    updated_at: datetime
    started_at: None
    finished_at: None


_SUBMIT = msgspec.json.Decoder(JobSubmit)
_BATCH = msgspec.json.Decoder(JobBatch)


def create_app() -> Litestar:
    dsn = os.environ["BENCH_PG_DSN"]
    tenant_id = int(os.environ["BENCH_TENANT_ID"])
    state = State()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The gateway's write sessions keep up to 5 pooled connections (half of 10); so does this pool.
        state.pool = await asyncpg.create_pool(dsn, min_size=1, max_size=5)
        try:
            yield
        finally:
            await state.pool.close()

    @post("/jobengine/jobs")
    async def submit(request: Request[Any, Any, Any]) -> Response[bytes]:
        data = _SUBMIT.decode(await request.body())
        now = datetime.now(UTC)
        job_id = str(uuid.uuid4())
        async with state.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(TAKE_SOURCE, tenant_id, data.source_id, 1, now)
            if row is None or not row["enabled"]:
                raise ValueError("source")
            await connection.execute(
                INSERT_JOB, tenant_id, job_id, row["project_id"], data.source_id, data.job_type,
                msgspec.json.encode(data.payload).decode(), data.priority, data.max_attempts, now,
            )  # fmt: skip
            await connection.execute(
                INSERT_AUDIT, now, tenant_id, "job.submit", "/jobengine/jobs", job_id, uuid.uuid4().hex, 201
            )
        view = JobView(
            job_id, data.job_type, data.source_id, row["project_id"], "pending", data.priority, 0, data.max_attempts,
            data.payload, now, None, None, None, None, None, None, None, None, now, now, None, None,
        )  # fmt: skip
        return Response(msgspec.json.encode(view), status_code=201, media_type="application/json")

    @post("/jobengine/jobs/batch")
    async def submit_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        jobs = _BATCH.decode(await request.body()).jobs
        now = datetime.now(UTC)
        ids = [str(uuid.uuid4()) for _ in jobs]
        source_id = jobs[0].source_id  # the benchmark's batches name one source
        async with state.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(TAKE_SOURCE, tenant_id, source_id, len(jobs), now)
            if row is None or not row["enabled"]:
                raise ValueError("source")
            await connection.execute(
                INSERT_JOBS, tenant_id, row["project_id"], source_id, now, ids, [j.job_type for j in jobs],
                [msgspec.json.encode(j.payload).decode() for j in jobs], [j.priority for j in jobs],
                [j.max_attempts for j in jobs],
            )  # fmt: skip
            await connection.execute(
                INSERT_AUDIT, now, tenant_id, "job.submit_batch", "/jobengine/jobs/batch", None, uuid.uuid4().hex, 200
            )
        results = [{"index": i, "jobId": job_id} for i, job_id in enumerate(ids)]
        return Response(msgspec.json.encode({"results": results}), status_code=200, media_type="application/json")

    return Litestar(route_handlers=[submit, submit_batch], lifespan=[lifespan], debug=False)
