"""The embedded default (SQLite): the gateway process runs a worker of its own."""

from __future__ import annotations

from sqlalchemy import select

from app.engine import embedded
from app.runtime import Runtime
from app.settings import load_settings
from app.storage.models import Job, PackRun
from app.storage.tenants import add_tenant
from tests.conftest import serving
from tests.engine.conftest import eventually


async def test_embedded_worker_runs_submitted_jobs_and_pack_runs_on_sqlite(tmp_data_dir, keys, monkeypatch):
    monkeypatch.setenv("JOBGATE_WORKER_POLL_SECONDS", "0.05")
    from app.server import create_app

    settings = load_settings({
        "JOBGATE_DATA_DIR": str(tmp_data_dir),
        "JOBGATE_AUTH_JWKS_FILE": str(keys.jwks_path),
        "JOBGATE_AUTH_ISSUER": keys.issuer,
        "JOBGATE_AUTH_AUDIENCE": keys.audience,
        "JOBGATE_PUBLIC_URL": "http://gateway.test",
    })
    assert settings.is_sqlite
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    async with serving(app) as client:
        async with runtime.sessions.begin() as session:
            await add_tenant(session, "solo", "ws-solo")
        stop = await embedded.start(runtime)
        try:
            headers = {"Authorization": f"Bearer {keys.token(tenant='solo', scope='orch:submit orch:operate')}",
                       "X-Stella-Tenant": "solo", "X-Stella-Operator-Reason": "test"}
            source = await client.post("/jobengine/sources", json={"name": "s", "sourceType": "scanner"},
                                       headers=headers)
            assert source.status_code == 201, source.text
            source_id = source.json()["sourceId"]
            job = await client.post("/jobengine/jobs", json={"jobType": "demo.noop", "sourceId": source_id},
                                    headers=headers)
            pack = await client.post("/jobengine/pack-runs", headers=headers, json={
                "packName": "p", "packVersion": "1", "sourceId": source_id,
                "steps": [{"jobType": "demo.noop"}, {"jobType": "demo.sleep", "payload": {"seconds": 0.1}}]})
            assert job.status_code == pack.status_code == 201

            async def done():
                async with runtime.sessions() as session:
                    statuses = set((await session.execute(select(Job.status))).scalars())
                    run = (await session.execute(select(PackRun.status))).scalar_one()
                return statuses == {"succeeded"} and run == "succeeded"

            await eventually(done)
            # the embedded worker registered like any worker
            [worker] = (await client.get("/jobengine/workers", headers=headers)).json()["items"]
            assert {"demo.noop", "demo.sleep"} <= set(worker["jobTypes"]) and worker["concurrency"] >= 1
        finally:
            await stop()
        # and it is gone once the gateway stops it
        assert (await client.get("/jobengine/workers", headers=headers)).json()["items"] == []


async def test_embedded_worker_is_not_started_on_postgresql(runtime):
    stop = await embedded.start(runtime)
    assert not embedded.wanted(runtime)
    await stop()


async def test_embedded_worker_setting_starts_a_worker_beside_a_postgresql_gateway(runtime):
    import asyncio
    import dataclasses

    chosen = dataclasses.replace(runtime, settings=dataclasses.replace(runtime.settings, embedded_worker=True))
    assert embedded.wanted(chosen)
    stop = await embedded.start(chosen)
    try:
        assert "jobgate-embedded-worker" in {task.get_name() for task in asyncio.all_tasks()}
    finally:
        await stop()
    assert "jobgate-embedded-worker" not in {task.get_name() for task in asyncio.all_tasks() if not task.done()}
