"""Revalidation without the database, in one gateway process on both backends: an unchanged list
is answered 304 from the change feed's versions; after a write, or without a current feed, the
database answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import text

from app.storage.feed import versions_of
from tests.api.rows import Rows
from tests.conftest import make_app, serving

SOURCES = "/jobengine/sources"


class CountingSessions:
    """``runtime.read_sessions`` that counts the sessions the GET handlers open."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.opened = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        return self.factory(*args, **kwargs)


async def caught_up(runtime: Any, tenant: str) -> None:
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions() as session:
        want = (await versions_of(session, info.id)).get("", 0)
    deadline = time.monotonic() + 10
    while runtime.feed.versions(info.id, ("",)) != (want,):
        assert time.monotonic() < deadline, "the feed did not catch up"
        await asyncio.sleep(0.01)


async def test_an_unchanged_list_is_revalidated_without_the_database(client, factory, runtime, monkeypatch):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    await caught_up(runtime, tenant)
    headers = factory.headers(tenant)
    etag = (await client.get(SOURCES, headers=headers)).headers["etag"]
    first = await client.get(SOURCES, headers={**headers, "If-None-Match": etag})  # reads, and remembers
    assert first.status_code == 304
    counting = CountingSessions(runtime.read_sessions)
    monkeypatch.setattr(runtime, "read_sessions", counting)
    again = await client.get(SOURCES, headers={**headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "private, max-age=60, stale-if-error=300"
    assert "X-Stella-Tenant" in again.headers["vary"]
    assert counting.opened == 0


async def test_after_a_mutation_the_revalidation_reads_the_changed_list(client, factory, runtime):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    headers = factory.headers(tenant)
    etag = (await client.get(SOURCES, headers=headers)).headers["etag"]
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    await factory.source(client, tenant, name="another")  # no wait for the feed: the epoch says it
    changed = await client.get(SOURCES, headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert len(changed.json()["items"]) == 2


async def test_a_write_without_a_gateway_response_is_seen_once_the_feed_carries_it(client, factory, runtime):
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    await factory.source(client, tenant)
    headers = factory.headers(tenant)
    etag = (await client.get(SOURCES, headers=headers)).headers["etag"]
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    await rows.add(rows.source(name="written by the engine"))
    await caught_up(runtime, tenant)
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 200


async def test_other_kinds_changing_keep_the_list_current(client, factory, runtime, monkeypatch):
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    await factory.source(client, tenant)
    await caught_up(runtime, tenant)  # else the answer is remembered at versions the feed still advances
    headers = factory.headers(tenant)
    etag = (await client.get(SOURCES, headers=headers)).headers["etag"]
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    await rows.add(rows.quota(job_type="elsewhere"))  # a quota: the sources list does not depend on it
    await caught_up(runtime, tenant)
    counting = CountingSessions(runtime.read_sessions)
    monkeypatch.setattr(runtime, "read_sessions", counting)
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    assert counting.opened == 0


async def test_a_project_or_a_query_is_remembered_apart(client, factory, runtime):
    tenant = await factory.tenant()
    await factory.source(client, tenant, projectId="billing")
    await factory.source(client, tenant, projectId="scanner")
    headers = factory.headers(tenant)
    etag = (await client.get(SOURCES, headers=headers)).headers["etag"]
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    # the whole tenant's tag names another answer under a project, or with a filter
    narrowed = await client.get(SOURCES, headers={**factory.headers(tenant, project="billing"), "If-None-Match": etag})
    assert narrowed.status_code == 200
    filtered = await client.get(SOURCES, params={"enabled": "true", "limit": 1},
                                headers={**headers, "If-None-Match": etag})
    assert filtered.status_code == 200


async def test_without_a_current_feed_the_database_answers(client, factory, runtime, monkeypatch):
    tenant = await factory.tenant()
    await factory.source(client, tenant)
    headers = factory.headers(tenant)
    etag = (await client.get(SOURCES, headers=headers)).headers["etag"]
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    await runtime.feed.stop()
    try:
        counting = CountingSessions(runtime.read_sessions)
        monkeypatch.setattr(runtime, "read_sessions", counting)
        assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
        assert counting.opened == 1
    finally:
        await runtime.feed.start()


async def test_clock_dependent_answers_always_read_the_database(client, factory, runtime, monkeypatch):
    tenant = await factory.tenant()
    headers = factory.headers(tenant)
    etag = (await client.get("/jobengine/deadletter/stats", headers=headers)).headers["etag"]
    for _ in range(2):
        counting = CountingSessions(runtime.read_sessions)
        monkeypatch.setattr(runtime, "read_sessions", counting)
        revalidated = await client.get("/jobengine/deadletter/stats", headers={**headers, "If-None-Match": etag})
        assert revalidated.status_code == 304
        assert counting.opened == 1
        monkeypatch.undo()


@pytest.mark.backends("postgresql")  # two processes share PostgreSQL and Redis
async def test_a_process_whose_feed_lags_still_never_answers_a_stale_304_after_a_mutation(
    backend, client, factory, gateway_env, monkeypatch
):
    """Process B's feed hears of every commit 0.5 s late. A mutation through process A advances the
    write epoch before A answers, so B's revalidation that begins after that answer reads the
    database; a write without an answer (SQL here; the worker, the reconciler) is seen by B once
    its feed delivers it: the window the guarantee bounds."""
    other_app = make_app(gateway_env)
    async with serving(other_app) as other:
        lagging = other_app.state.runtime.feed
        notified = lagging._notified
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(lagging, "_notified", lambda *args: loop.call_later(0.5, notified, *args))
        tenant = await factory.tenant()
        await factory.source(client, tenant)
        await asyncio.sleep(0.6)
        headers = factory.headers(tenant)
        etag = (await other.get(SOURCES, headers=headers)).headers["etag"]
        assert (await other.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
        assert (await other.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
        await factory.source(client, tenant, name="through A")  # answered by A
        assert (await other.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 200
        await asyncio.sleep(0.6)
        etag = (await other.get(SOURCES, headers=headers)).headers["etag"]
        assert (await other.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
        rows = await Rows.of(factory.runtime, tenant)
        await rows.add(rows.source(name="without an answer"))
        stale = await other.get(SOURCES, headers={**headers, "If-None-Match": etag})
        assert stale.status_code == 304  # within the window: the feed has not delivered it yet
        await asyncio.sleep(0.6)
        assert (await other.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 200


@pytest.mark.backends("postgresql")
async def test_a_feed_whose_connection_is_lost_falls_back_to_the_database_until_it_has_caught_up(
    client, factory, runtime, monkeypatch
):
    """The listening connection is killed (a PostgreSQL restart, a proxy timeout): the process
    stops answering from its copy at once, a write made meanwhile without an answer is read from
    the database, and once the feed has reconnected and read what it missed, revalidations are
    answered from memory again."""
    tenant = await factory.tenant()
    rows = await Rows.of(runtime, tenant)
    await factory.source(client, tenant)
    await caught_up(runtime, tenant)
    headers = factory.headers(tenant)
    etag = (await client.get(SOURCES, headers=headers)).headers["etag"]
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    listening = runtime.feed.listening_pid
    assert listening is not None
    async with runtime.sessions() as session:
        assert (await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": listening})).scalar_one()
    deadline = time.monotonic() + 10
    while runtime.feed.current:
        assert time.monotonic() < deadline, "the feed did not notice that its connection was lost"
        await asyncio.sleep(0.005)
    assert runtime.feed.versions(rows.tenant_id, ("source",)) is None  # nothing answered from the copy

    await rows.add(rows.source(name="written while the feed was down"))
    counting = CountingSessions(runtime.read_sessions)
    monkeypatch.setattr(runtime, "read_sessions", counting)
    changed = await client.get(SOURCES, headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200 and len(changed.json()["items"]) == 2
    assert counting.opened == 1

    deadline = time.monotonic() + 20
    while runtime.feed.listening_pid in (None, listening):
        assert time.monotonic() < deadline, "the feed did not reconnect"
        await asyncio.sleep(0.02)
    await caught_up(runtime, tenant)
    etag = changed.headers["etag"]
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304  # remembered
    opened = counting.opened
    assert (await client.get(SOURCES, headers={**headers, "If-None-Match": etag})).status_code == 304
    assert counting.opened == opened  # from memory again
