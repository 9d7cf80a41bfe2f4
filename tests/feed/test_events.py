"""GET /jobengine/events against gateway processes on PostgreSQL and Redis: a change committed
through one process reaches a stream on another, filtered to what the caller may read, resumable
with Last-Event-ID, limited, and ended at the token's expiry."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import delete

from app.storage.models import FeedEvent
from tests.conftest import ROOT, GatewayProcess, free_port
from tests.feed.support import stream

pytestmark = pytest.mark.backends("postgresql")  # gateway processes on the run's PostgreSQL and Redis

EVENTS = "/jobengine/events"
CONTRACT = yaml.safe_load((ROOT / "contracts" / "jobengine-gateway.openapi.yaml").read_text())


def headers(factory: Any, tenant: str, **kwargs: Any) -> dict[str, str]:
    return factory.headers(tenant, reason="feed test", **kwargs)


async def create_source(url: str, factory: Any, tenant: str, **fields: Any) -> dict[str, Any]:
    body = {"name": "s", "sourceType": "scanner", **fields}
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{url}/jobengine/sources", json=body, headers=headers(factory, tenant))
    assert response.status_code == 201, response.text
    return response.json()


async def test_a_change_committed_through_one_process_reaches_a_stream_on_another(
    backend, factory, two_gateways
):
    first, second = two_gateways
    tenant = await factory.tenant()
    async with stream(first.url + EVENTS, headers(factory, tenant)) as events:
        source = await create_source(second.url, factory, tenant, projectId="billing")
        # one transaction: the source and its audit row, numbered in (kind, id) order
        audit, event = await events.next_event(), await events.next_event()
    assert audit.event == "audit.changed" and int(audit.id or 0) + 1 == int(event.id or 0)
    assert event.event == "source.changed"
    data = event.json()
    assert set(data) == {"kind", "id", "version", "at", "projectId"}
    assert (data["kind"], data["id"], data["projectId"]) == ("source", source["sourceId"], "billing")
    assert event.id == str(data["version"])
    assert data["at"].endswith("Z")
    # the event's data is what the contract's ChangeEventData says
    schema = CONTRACT["components"]["schemas"]["ChangeEventData"]
    assert set(schema["required"]) <= set(data) <= set(schema["properties"])
    assert data["kind"] in schema["properties"]["kind"]["enum"]


async def test_kinds_are_narrowed_to_what_the_scopes_may_read_and_to_the_kinds_asked(
    backend, factory, two_gateways
):
    first, second = two_gateways
    tenant = await factory.tenant()
    quota = {"jobType": "scan", "maxActive": 1, "maxPerHour": 10, "burst": 1}
    async with (
        stream(first.url + EVENTS, headers(factory, tenant, scope="orch:read")) as readers,
        stream(first.url + EVENTS, headers(factory, tenant, scope="orch:read orch:quota"), kinds="quota") as quotas,
    ):
        async with httpx.AsyncClient() as client:
            created = await client.post(f"{second.url}/jobengine/quotas", json=quota, headers=headers(factory, tenant))
            assert created.status_code == 201, created.text
        await create_source(second.url, factory, tenant)
        # orch:read sees the source, not the quota nor the audit rows (orch:operate)
        assert (await readers.next_event()).event == "source.changed"
        # kinds=quota sees only the quota
        event = await quotas.next_event()
        assert (event.event, event.json()["id"]) == ("quota.changed", created.json()["quotaId"])


async def test_under_a_project_only_that_projects_objects_are_sent(backend, factory, two_gateways):
    first, second = two_gateways
    tenant = await factory.tenant()
    async with stream(first.url + EVENTS, headers(factory, tenant, project="billing"), kinds="source") as events:
        await create_source(second.url, factory, tenant, projectId="scanner")
        billing = await create_source(second.url, factory, tenant, projectId="billing")
        event = await events.next_event()
    assert event.json()["id"] == billing["sourceId"]


async def test_last_event_id_resumes_with_every_change_since(backend, factory, two_gateways):
    first, second = two_gateways
    tenant = await factory.tenant()
    async with stream(first.url + EVENTS, headers(factory, tenant), kinds="source") as events:
        created = [await create_source(second.url, factory, tenant, name=f"s{n}") for n in range(3)]
        first_event = await events.next_event()
    assert first_event.json()["id"] == created[0]["sourceId"]
    resumed_headers = {**headers(factory, tenant), "Last-Event-ID": first_event.id or ""}
    async with stream(second.url + EVENTS, resumed_headers, kinds="source") as events:
        got = [(await events.next_event()).json()["id"] for _ in range(2)]
    assert got == [created[1]["sourceId"], created[2]["sourceId"]]


async def test_an_id_older_than_the_retained_events_gets_one_reset(backend, factory, runtime, two_gateways):
    first, second = two_gateways
    tenant = await factory.tenant()
    for n in range(3):
        await create_source(second.url, factory, tenant, name=f"s{n}")
    info = await runtime.tenants.get(tenant)
    async with runtime.sessions.begin() as session:  # the retention window passed over the first two
        await session.execute(delete(FeedEvent).where(FeedEvent.tenant_id == info.id, FeedEvent.seq <= 2))
    async with stream(first.url + EVENTS, {**headers(factory, tenant), "Last-Event-ID": "0"}) as events:
        reset = await events.next_event()
        assert reset.event == "reset"
        later = await create_source(second.url, factory, tenant)
        following = await events.next_event()
        while following.event != "source.changed":
            following = await events.next_event()
    assert following.json()["id"] == later["sourceId"]
    assert int(following.id or 0) > int(reset.id or 0)


@pytest.mark.parametrize(
    ("params", "extra", "code"),
    [
        ({"kinds": "source,nope"}, {}, "validation_failed"),
        ({"kinds": ""}, {}, "validation_failed"),
        ({}, {"Last-Event-ID": "abc"}, "validation_failed"),
        ({}, {"Last-Event-ID": "-1"}, "validation_failed"),
    ],
)
async def test_bad_kinds_or_last_event_id_are_400_problems(backend, factory, two_gateways, params, extra, code):
    tenant = await factory.tenant()
    async with httpx.AsyncClient() as client:
        response = await client.get(two_gateways[0].url + EVENTS, params=params,
                                    headers={**headers(factory, tenant), **extra})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


async def test_the_stream_needs_orch_read(backend, factory, two_gateways):
    tenant = await factory.tenant()
    async with httpx.AsyncClient() as client:
        response = await client.get(two_gateways[0].url + EVENTS, headers=headers(factory, tenant, scope="orch:quota"))
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"


async def test_the_stream_ends_at_the_tokens_expiry(backend, factory, two_gateways):
    tenant = await factory.tenant()
    short = headers(factory, tenant, exp=int(time.time()) + 2)
    async with stream(two_gateways[0].url + EVENTS, short) as events:
        await events.ended(timeout=15)


@pytest.fixture(scope="module")
def limited_gateway(gateway_env):  # type: ignore[no-untyped-def]
    gateway = GatewayProcess(gateway_env, free_port(), JOBGATE_STREAMS_PER_TENANT="2", JOBGATE_STREAMS_PER_PROCESS="3")
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()


async def test_streams_over_the_tenant_or_process_budget_are_429_too_many_streams(backend, factory, limited_gateway):
    first, second, third = await factory.tenant(), await factory.tenant(), await factory.tenant()
    url = limited_gateway.url + EVENTS
    async with stream(url, headers(factory, first)), stream(url, headers(factory, first)):
        async with httpx.AsyncClient() as client:
            over_tenant = await client.get(url, headers=headers(factory, first))
        assert over_tenant.status_code == 429
        assert over_tenant.json()["code"] == "too_many_streams"
        assert int(over_tenant.headers["retry-after"]) >= 1
        async with stream(url, headers(factory, second)):
            async with httpx.AsyncClient() as client:
                over_process = await client.get(url, headers=headers(factory, third))
            assert over_process.status_code == 429
            assert over_process.json()["code"] == "too_many_streams"
    # closed streams give their slots back (once the server has seen the clients go)
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient() as client:
        while True:
            async with client.stream("GET", url, headers=headers(factory, third)) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the slots were not given back within 10 s"
            await asyncio.sleep(0.1)


async def test_a_stopping_gateway_ends_its_streams_with_a_retry_hint(backend, factory, gateway_env):
    gateway = GatewayProcess(gateway_env, free_port())
    try:
        gateway.wait_ready()
        tenant = await factory.tenant()
        async with stream(gateway.url + EVENTS, headers(factory, tenant)) as events:
            await create_source(gateway.url, factory, tenant)
            await events.next_event()
            gateway.process.terminate()
            blocks = await events.ended(timeout=10)
        assert blocks[-1].retry is not None and blocks[-1].retry > 0
        assert gateway.process.wait(20) == 0
    finally:
        gateway.stop()


async def test_the_embedded_default_streams_its_changes(backend, factory, gateway_env, tmp_data_dir):
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**gateway_env, "JOBGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_data_dir / 'jobgate.db'}",
           "JOBGATE_REDIS_URL": "", "JOBGATE_DATA_DIR": str(tmp_data_dir)}
    gateway = GatewayProcess(env, free_port())
    try:
        gateway.wait_ready()
        tenant = "acme-embedded"
        subprocess.run([sys.executable, "-m", "app.cli", "tenants", "add", tenant, "--workspace", "w",
                        "--create-workspace"], env={**__import__("os").environ, **env}, check=True,
                       capture_output=True, cwd=ROOT)
        async with stream(gateway.url + EVENTS, headers(factory, tenant), kinds="source,job") as events:
            source = await create_source(gateway.url, factory, tenant)
            event = await events.next_event()
            assert (event.event, event.json()["id"]) == ("source.changed", source["sourceId"])
            async with httpx.AsyncClient() as client:
                job = await client.post(f"{gateway.url}/jobengine/jobs", headers=factory.headers(tenant, reason=None),
                                        json={"jobType": "demo.noop", "sourceId": source["sourceId"]})
            assert job.status_code == 201, job.text
            # submitted, then run to success by the embedded worker: the job's events arrive
            seen: set[str] = set()
            while "job" not in seen:
                seen.add((await events.next_event()).json()["kind"])
    finally:
        gateway.stop()


async def test_the_progress_overlay_streams_a_snapshot_then_each_change(backend, factory, runtime, two_gateways):
    from tests.operations.support import add_run

    first, _ = two_gateways
    tenant = await factory.tenant()
    info = await runtime.tenants.get(tenant)
    path = f"/admin/t/{info.id}/operations/progress"
    async with httpx.AsyncClient() as client:
        polled = (await client.get(first.url + path, headers=headers(factory, tenant))).json()
    streaming = {**headers(factory, tenant), "Accept": "text/event-stream"}
    async with stream(first.url + path, streaming) as events:
        snapshot = await events.next_event()
        assert snapshot.event == "snapshot" and snapshot.json() == polled
        run_id = await add_run(runtime, info, status="running", age=5, heartbeat_age=1)
        changed = await events.next_event()
    assert changed.event == "changed"
    assert [item["run_id"] for item in changed.json()["items"]] == [run_id]
    assert changed.json()["has_visible_active_runs"] is True


async def test_the_canonical_operations_list_streams_too_and_still_answers_json(
    backend, factory, runtime, two_gateways
):
    from tests.operations.support import add_run

    first, second = two_gateways
    tenant = await factory.tenant()
    info = await runtime.tenants.get(tenant)
    streaming = {**headers(factory, tenant), "Accept": "text/event-stream"}
    async with stream(first.url + "/admin/operations", streaming, activeTab="active") as events:
        assert (await events.next_event()).event == "snapshot"
        run_id = await add_run(runtime, info, status="queued", age=1)
        changed = await events.next_event()
    assert run_id in [item["run_id"] for item in changed.json()["items"]]
    async with httpx.AsyncClient() as client:
        plain = await client.get(second.url + "/admin/operations", params={"activeTab": "active"},
                                 headers=headers(factory, tenant))
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/json")
    assert "Accept" in plain.headers["vary"]


async def test_a_stream_whose_client_left_before_its_start_was_sent_gives_its_slot_back(client, app, factory):
    """The server cannot send the response's start (the connection is gone): the stream's body never
    starts, and its budget slot is given back all the same (else the process's count would leak)."""
    tenant = await factory.tenant()
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])
        raise OSError("the connection was closed")

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": EVENTS, "raw_path": EVENTS.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers(factory, tenant).items()],
        "server": ("testserver", 80), "client": ("127.0.0.1", 50000),
    }
    budget_before = app.state.get("stream_budget")
    opened_before = budget_before.open if budget_before is not None else 0
    with pytest.raises(Exception):  # noqa: PT011 - the server's error, as the framework wraps it
        await app(scope, receive, send)
    assert sent == ["http.response.start"]
    assert app.state["stream_budget"].open == opened_before
