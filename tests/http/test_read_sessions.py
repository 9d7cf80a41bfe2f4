"""A GET's session is one an earlier GET left behind, holding nothing of that GET
(``app/http/mutation.py:read_session``); writes always get a new session."""

from __future__ import annotations

from sqlalchemy import select

from app.http.mutation import IDLE_READ_SESSIONS, read_session
from app.storage.models import Tenant
from tests.storage.test_reads import own_runtime


async def test_the_next_get_takes_the_session_the_last_one_left_empty(gateway_env, factory):
    key = await factory.tenant()
    async with own_runtime(gateway_env) as runtime:
        async with read_session(runtime, "GET") as first:
            tenant = (await first.execute(select(Tenant).where(Tenant.key == key))).scalar_one()
            assert first.in_transaction() and tenant in first
        async with read_session(runtime, "GET") as second:
            assert second is first
            assert not second.in_transaction() and tenant not in second and not second.identity_map
            second.add(Tenant(key="never-written", workspace_id=tenant.workspace_id))  # pending, never flushed
        async with read_session(runtime, "GET") as third:
            assert third is first and not third.new
        assert (await runtime.tenants.get("never-written")) is None


async def test_gets_at_once_have_sessions_of_their_own_and_leave_a_bounded_number(gateway_env):
    async with own_runtime(gateway_env) as runtime:
        contexts = [read_session(runtime, "GET") for _ in range(IDLE_READ_SESSIONS + 5)]
        sessions = [await context.__aenter__() for context in contexts]
        assert len({id(session) for session in sessions}) == len(sessions)
        for context in contexts:
            await context.__aexit__(None, None, None)
        assert len(runtime.idle_read_sessions) == IDLE_READ_SESSIONS


async def test_writes_never_take_a_session_a_get_left(gateway_env):
    async with own_runtime(gateway_env) as runtime:
        async with read_session(runtime, "GET") as read:
            pass
        for method in ("POST", "PUT", "DELETE"):
            async with read_session(runtime, method) as write:
                assert write is not read
                assert write.bind is runtime.engine and read.bind is not runtime.engine  # not in autocommit
        assert runtime.idle_read_sessions == [read]
