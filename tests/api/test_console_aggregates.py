"""The summaries read from maintained aggregates answer the same bytes as the ``GROUP BY`` over the
rows they replaced (``tests/api/grouped.py``), page by page, continuation tokens included, for
every caller project and after inserts, status changes, moves and deletes of the rows."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update

from app.domain.deadletter import summary as groups
from app.domain.jobs import service as jobs_service
from app.domain.quotas import service as quotas_service
from app.storage import aggregates
from app.storage.models import AuditRecord, DeadLetterEntry, Job
from tests.api import grouped
from tests.api.rows import Rows, ago, tenant_rows
from tests.conftest import ROOT

CATEGORIES = ("transient", "permanent", "policy", "timeout")
CODES = ("E_IO", "E_TIMEOUT", "E_DENIED", "E_QUOTA", "E_PARSE")
PROJECTS = (None, "billing", "scanner")
ENTRY_STATUSES = ("pending", "pending", "replaying", "replayed", "discarded")
JOB_TYPES = ("scan", "index", "mail")
SOURCES = ("src-a", "src-b")
JOB_STATUSES = ("pending", "scheduled", "leased", "running", "succeeded", "failed", "canceled", "timed_out")


def random_entries(rows: Rows, rng: random.Random, n: int) -> list[DeadLetterEntry]:
    return [
        rows.entry(
            f"{rng.choice(('alpha', 'bravo'))} failed after {rng.randrange(1000)} ms",
            error_code=rng.choice(CODES),
            category=rng.choice(CATEGORIES),
            project_id=rng.choice(PROJECTS),
            status=rng.choice(ENTRY_STATUSES),
            dead_lettered_at=ago(minutes=rng.randrange(1, 100_000)).replace(microsecond=rng.randrange(1_000_000)),
        )
        for _ in range(n)
    ]


def random_jobs(rows: Rows, rng: random.Random, n: int) -> list[Job]:
    jobs = []
    for _ in range(n):
        status = rng.choice(JOB_STATUSES)
        started = ago(minutes=rng.choice((0.2, 5, 30, 90, 600))) if status not in ("pending", "scheduled") else None
        jobs.append(
            rows.job(
                job_type=rng.choice(JOB_TYPES),
                source_id=rng.choice(SOURCES),
                project_id=rng.choice(PROJECTS),
                status=status,
                run_after=ago(minutes=rng.choice((-30, -1, 1, 30))),  # some queued jobs are not due yet
                started_at=started,
            )
        )
    return jobs


async def both(monkeypatch: Any, target: Any, name: str, reference: Any, request: Any) -> tuple[Any, Any]:
    """The response as the route answers now, and with ``target.name`` set back to the GROUP BY."""
    now = await request()
    with monkeypatch.context() as patched:
        patched.setattr(target, name, reference)
        before = await request()
    return now, before


async def assert_summary_pages_equal(client: Any, factory: Any, monkeypatch: Any, tenant: str) -> int:
    """Every page of the dead-letter summary, for each caller project and page size; the number of
    groups seen."""
    seen = 0
    for project in (*PROJECTS, "nobody"):
        headers = factory.headers(tenant, scope="orch:operate", project=project)
        for limit in (1, 4, 50):
            token: str | None = None
            for _ in range(100):
                params: dict[str, Any] = {"limit": limit}
                if token is not None:
                    params["continuationToken"] = token

                async def request(params: dict[str, Any] = params, headers: dict[str, str] = headers) -> Any:
                    return await client.get("/jobengine/deadletter/summary", params=params, headers=headers)

                now, before = await both(monkeypatch, groups, "summary", grouped.deadletter_summary, request)
                assert now.status_code == before.status_code == 200, now.text
                assert now.content == before.content
                body = now.json()
                seen += len(body["items"])
                token = body["continuationToken"]
                if token is None:
                    break
            else:
                raise AssertionError("the walk did not end")
    return seen


async def assert_job_summaries_equal(client: Any, factory: Any, monkeypatch: Any, tenant: str) -> None:
    for project in (*PROJECTS, "nobody"):
        headers = factory.headers(tenant, scope="orch:read", project=project)
        for params in ({}, {"jobType": "scan"}, {"sourceId": "src-b"}, {"jobType": "mail", "sourceId": "src-a"},
                       {"jobType": "none"}):

            async def request(params: dict[str, Any] = params, headers: dict[str, str] = headers) -> Any:
                return await client.get("/jobengine/jobs/summary", params=params, headers=headers)

            now, before = await both(monkeypatch, jobs_service, "summary", grouped.job_summary, request)
            assert now.status_code == before.status_code == 200, now.text
            assert now.content == before.content


async def assert_quota_summaries_equal(client: Any, factory: Any, monkeypatch: Any, tenant: str, runtime: Any,
                                       tenant_id: int) -> None:
    headers = factory.headers(tenant, scope="orch:quota")

    async def request() -> Any:
        return await client.get("/jobengine/quotas/summary", headers=headers)

    now = await request()
    with monkeypatch.context() as patched:
        patched.setattr(quotas_service, "observed_by_job_type", grouped.observed_by_job_type)
        patched.setattr(jobs_service, "waiting_per_type", grouped.waiting_per_type)
        before = await request()
    assert now.status_code == before.status_code == 200, now.text
    assert now.content == before.content
    # The dispatcher reads the same figures, job types without any job included.
    async with runtime.sessions() as session:
        for types in (list(JOB_TYPES), ["scan"], ["absent", "mail"]):
            moment = datetime.now(UTC)
            assert await quotas_service.observed_by_job_type(session, tenant_id, types, moment) == (
                await grouped.observed_by_job_type(session, tenant_id, types, moment)
            )


async def assert_exact(runtime: Any, tenant_id: int) -> None:
    assert await aggregates.check(runtime.engine, tenant_id) == []


async def test_summaries_answer_the_bytes_of_the_group_by(client, factory, runtime, monkeypatch):
    tenant, rows = await tenant_rows(runtime, factory)
    rng = random.Random(8)
    await rows.add(*random_entries(rows, rng, 120), *random_jobs(rows, rng, 150))
    for job_type in JOB_TYPES[:2]:
        await rows.add(rows.quota(job_type))
    assert await assert_summary_pages_equal(client, factory, monkeypatch, tenant) > 20
    await assert_job_summaries_equal(client, factory, monkeypatch, tenant)
    await assert_quota_summaries_equal(client, factory, monkeypatch, tenant, runtime, rows.tenant_id)
    await assert_exact(runtime, rows.tenant_id)


async def test_summaries_stay_equal_through_changes_and_deletes(client, factory, runtime, monkeypatch):
    tenant, rows = await tenant_rows(runtime, factory)
    rng = random.Random(11)
    entries = await rows.add(*random_entries(rows, rng, 80))
    jobs = await rows.add(*random_jobs(rows, rng, 80))
    await rows.add(rows.quota("scan"), rows.quota("mail"))
    for _ in range(3):
        async with runtime.sessions.begin() as session:
            for entry in rng.sample(entries, 15):
                await session.execute(
                    update(DeadLetterEntry)
                    .where(DeadLetterEntry.tenant_id == rows.tenant_id, DeadLetterEntry.entry_id == entry.entry_id)
                    .values(status=rng.choice(ENTRY_STATUSES), category=rng.choice(CATEGORIES),
                            project_id=rng.choice(PROJECTS), dead_lettered_at=ago(minutes=rng.randrange(1, 5000)))
                )
            for job in rng.sample(jobs, 15):
                await session.execute(
                    update(Job)
                    .where(Job.tenant_id == rows.tenant_id, Job.job_id == job.job_id)
                    .values(status=rng.choice(JOB_STATUSES), source_id=rng.choice(SOURCES),
                            job_type=rng.choice(JOB_TYPES), project_id=rng.choice(PROJECTS))
                )
            gone = rng.sample(entries, 5)
            entries = [e for e in entries if e not in gone]
            await session.execute(
                delete(DeadLetterEntry).where(
                    DeadLetterEntry.tenant_id == rows.tenant_id,
                    DeadLetterEntry.entry_id.in_([e.entry_id for e in gone]),
                )
            )
            gone_jobs = rng.sample(jobs, 5)
            jobs = [j for j in jobs if j not in gone_jobs]
            await session.execute(
                delete(Job).where(Job.tenant_id == rows.tenant_id, Job.job_id.in_([j.job_id for j in gone_jobs]))
            )
        entries += await rows.add(*random_entries(rows, rng, 10))
        jobs += await rows.add(*random_jobs(rows, rng, 10))
        await aggregates.fold_stripes(runtime.engine)
        await assert_exact(runtime, rows.tenant_id)
        await assert_summary_pages_equal(client, factory, monkeypatch, tenant)
        await assert_job_summaries_equal(client, factory, monkeypatch, tenant)
        await assert_quota_summaries_equal(client, factory, monkeypatch, tenant, runtime, rows.tenant_id)


async def test_an_emptied_group_leaves_the_summary(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    kept, dropped = await rows.add(
        rows.entry(error_code="E_IO", category="transient"), rows.entry(error_code="E_DENIED", category="policy")
    )
    async with runtime.sessions.begin() as session:
        await session.execute(delete(DeadLetterEntry).where(DeadLetterEntry.entry_id == dropped.entry_id))
    body = (
        await client.get("/jobengine/deadletter/summary", headers=factory.headers(tenant, scope="orch:operate"))
    ).json()
    assert [(g["category"], g["errorCode"], g["total"]) for g in body["items"]] == [("transient", "E_IO", 1)]
    assert kept.entry_id


@pytest.mark.parametrize("status", ["cancel_requested", "future_status"])
async def test_job_counters_count_any_status_value(runtime, factory, status):
    """The counters copy the status from the row: a value no code lists is counted too."""
    _, rows = await tenant_rows(runtime, factory)
    (job,) = await rows.add(rows.job(status="running"))
    async with runtime.sessions.begin() as session:
        await session.execute(update(Job).where(Job.tenant_id == rows.tenant_id).values(status=status))
    from app.storage.job_counts import by_type_and_status

    async with runtime.sessions() as session:
        assert await by_type_and_status(session, rows.tenant_id) == [(job.job_type, status, 1)]
    await assert_exact(runtime, rows.tenant_id)


def check_command(runtime: Any, gateway_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **gateway_env, "JOBGATE_DATABASE_URL": runtime.settings.database_url}
    if runtime.settings.is_sqlite:
        env.pop("JOBGATE_DATABASE_POOL_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "check-aggregates", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


async def test_check_aggregates_reports_drift_and_repairs_it_with_an_audit_row(client, runtime, factory, gateway_env):
    tenant, rows = await tenant_rows(runtime, factory)
    _, other_rows = await tenant_rows(runtime, factory)
    rng = random.Random(3)
    await rows.add(*random_entries(rows, rng, 20), *random_jobs(rows, rng, 20))
    await other_rows.add(*random_entries(other_rows, rng, 5))
    clean = check_command(runtime, gateway_env, "--tenant", tenant)
    assert (clean.returncode, clean.stdout.strip()) == (0, "aggregates exact"), clean.stderr
    # Drift, as a bug or a hand edit would leave it: a counter off by one, a group gone.
    async with runtime.sessions.begin() as session:
        await session.execute(
            text("UPDATE job_counts SET jobs = jobs + 1 WHERE tenant_id = :t AND job_type = 'scan' AND status = 'pending'"),
            {"t": rows.tenant_id},
        )
        await session.execute(text("DELETE FROM dead_letter_groups WHERE tenant_id = :t AND category = 'policy'"),
                              {"t": rows.tenant_id})
    found = check_command(runtime, gateway_env, "--tenant", tenant)
    assert found.returncode == 1, found.stdout + found.stderr
    drifts = found.stdout.splitlines()
    assert drifts and all(line.startswith(f"drift: tenant {tenant}: ") for line in drifts)
    assert any("job_counts (job_type='scan', status='pending'" in line for line in drifts)
    assert any("dead_letter_groups (category='policy'" in line for line in drifts)
    assert await aggregates.check(runtime.engine, other_rows.tenant_id) == []  # read-only: nothing changed
    assert len(await aggregates.check(runtime.engine, rows.tenant_id)) == len(drifts)
    repaired = check_command(runtime, gateway_env, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert [line.removeprefix("repaired: ") for line in repaired.stdout.splitlines()[:-1]] == [
        line.removeprefix("drift: ") for line in drifts
    ]
    assert check_command(runtime, gateway_env).returncode == 0
    async with runtime.sessions() as session:
        audit = list(
            await session.execute(
                select(AuditRecord.tenant_id, AuditRecord.action, AuditRecord.target).where(
                    AuditRecord.action == "aggregates.repair",
                    AuditRecord.tenant_id.in_([rows.tenant_id, other_rows.tenant_id]),
                )
            )
        )
    assert audit == [(rows.tenant_id, "aggregates.repair", "dead_letter_groups,job_counts")]


async def test_check_aggregates_of_an_unknown_tenant_is_a_usage_error(client, runtime, gateway_env):
    result = check_command(runtime, gateway_env, "--tenant", "no-such-tenant")
    assert result.returncode == 2 and "no tenant" in result.stderr
