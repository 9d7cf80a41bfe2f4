"""A request's session (``app/http/sessions.py:read_session``): a GET reads in autocommit, a
write runs in a transaction of its own, and each session is closed when its request ends."""

from __future__ import annotations

from sqlalchemy import select

from app.http.sessions import read_session
from app.storage.models import Tenant
from tests.storage.test_reads import own_runtime


async def test_a_get_reads_in_autocommit_and_leaves_nothing_behind(gateway_env, factory):
    key = await factory.tenant()
    async with own_runtime(gateway_env) as runtime:
        async with read_session(runtime, "GET") as read:
            tenant = (await read.execute(select(Tenant).where(Tenant.key == key))).scalar_one()
            assert read.bind is not runtime.engine  # the autocommit engine
            assert tenant in read
        assert tenant not in read and not read.in_transaction()


async def test_each_request_has_a_session_of_its_own_and_writes_are_transactional(gateway_env):
    async with own_runtime(gateway_env) as runtime:
        async with read_session(runtime, "GET") as first, read_session(runtime, "GET") as second:
            assert first is not second
        for method in ("POST", "PUT", "DELETE"):
            async with read_session(runtime, method) as write:
                assert write.bind is runtime.engine and write is not first
