"""Stopping and pacing a replay by filter while a real `jobgate worker` runs it.

The worker's background step replays chunk by chunk; an operator's cancel stops it between two
chunks (no entry of the run is replayed after the cancel, the ones replayed before run their jobs
to the end) and a new rate paces it from its next chunk on."""

from __future__ import annotations

from typing import Any

from app.storage.models import OperationRun
from tests.api.rows import Rows, ago
from tests.engine.conftest import eventually
from tests.engine.support import entries_of

PENDING = "/jobengine/deadletter/replay/pending"
FAST = 100_000


async def dead_letters(runtime: Any, tenant: str, count: int, *, error_code: str) -> None:
    """``count`` pending entries of ``demo.noop`` jobs (a replay of one succeeds), of one source."""
    rows = await Rows.of(runtime, tenant)
    source = rows.source()
    created: list[Any] = [source]
    for n in range(count):
        job = rows.job(source_id=source.source_id, job_type="demo.noop", status="failed", attempt=3)
        entry = rows.entry(
            f"connection refused by 10.0.0.{n}", job_id=job.job_id, job_type="demo.noop",
            source_id=source.source_id, error_code=error_code, dead_lettered_at=ago(minutes=5),
        )
        created += [job, entry]
    await rows.add(*created)


async def start(client: Any, factory: Any, tenant: str, error_code: str, rate: int) -> int:
    body = {"filter": {"errorCode": error_code}, "ratePerSecond": rate}
    response = await client.post(PENDING, json=body, headers=factory.headers(tenant))
    assert response.status_code == 202, response.text
    return response.json()["operationRunId"]


async def load_run(runtime: Any, run_id: int) -> OperationRun:
    async with runtime.sessions() as session:
        run = await session.get(OperationRun, run_id)
        assert run is not None
        return run


async def replayed_at_least(runtime: Any, run_id: int, count: int) -> Any:
    async def check() -> Any:
        run = await load_run(runtime, run_id)
        return run if run.summary_counts.get("replayed", 0) >= count else None

    return await eventually(check)


async def completed(runtime: Any, run_id: int, timeout: float = 20.0) -> OperationRun:
    async def check() -> Any:
        run = await load_run(runtime, run_id)
        return run if run.status == "completed" else None

    return await eventually(check, timeout=timeout)


async def test_cancel_mid_flight_stops_the_worker_between_chunks(client, factory, runtime, workers):
    tenant = await factory.tenant()
    worker = workers(tenant)
    await worker.ready()
    await dead_letters(runtime, tenant, 40, error_code="E_FLOOD")
    await dead_letters(runtime, tenant, 2, error_code="E_AFTER")
    run_id = await start(client, factory, tenant, "E_FLOOD", rate=4)  # 40 entries: ten seconds
    await replayed_at_least(runtime, run_id, 4)

    response = await client.post(
        f"/jobengine/deadletter/replays/{run_id}/cancel", headers=factory.headers(tenant, reason="wrong filter")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["outcome"], body["matched"]) == ("completed", "failed", 40)
    assert 4 <= body["replayed"] < 40 and body["canceled"] > 0
    assert body["replayed"] + body["skipped"] + body["failed"] + body["canceled"] == body["matched"]
    canceled = await load_run(runtime, run_id)

    # The worker's replay step keeps running: a later run is done by it, and still no entry of the
    # canceled run was replayed after the cancel.
    after = await start(client, factory, tenant, "E_AFTER", rate=FAST)
    assert (await completed(runtime, after)).summary_counts["replayed"] == 2
    flood = [e for e in await entries_of(runtime, tenant) if e.error_code == "E_FLOOD"]
    touched = [e for e in flood if e.replay_count > 0]
    assert len(touched) == body["replayed"]
    assert all(e.last_replayed_at <= canceled.completed_at for e in touched)
    assert sum(e.status == "pending" for e in flood) == body["canceled"]
    assert (await load_run(runtime, run_id)).summary_counts == canceled.summary_counts

    # What was replayed before the cancel stays replayed: its jobs run to the end.
    async def replays_done() -> bool:
        current = [e for e in await entries_of(runtime, tenant) if e.error_code == "E_FLOOD"]
        return sum(e.status == "replayed" for e in current) == body["replayed"]

    await eventually(replays_done)


async def test_a_rate_change_paces_the_workers_next_chunks(client, factory, runtime, workers):
    tenant = await factory.tenant()
    worker = workers(tenant)
    await worker.ready()
    await dead_letters(runtime, tenant, 100, error_code="E_PACED")
    run_id = await start(client, factory, tenant, "E_PACED", rate=2)  # 100 entries: fifty seconds
    await replayed_at_least(runtime, run_id, 2)

    response = await client.patch(
        f"/jobengine/deadletter/replays/{run_id}",
        json={"ratePerSecond": FAST},
        headers=factory.headers(tenant, reason="the registry is back"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["ratePerSecond"] == FAST
    # Well within the fifty seconds the old rate needed.
    run = await completed(runtime, run_id, timeout=20)
    assert (run.outcome, run.summary_counts) == (
        "succeeded",
        {"matched": 100, "replayed": 100, "skipped": 0, "failed": 0},
    )
    audit = await client.get(
        "/jobengine/audit", params={"action": "deadletter.replay_rate"}, headers=factory.headers(tenant)
    )
    assert [(a["target"], a["resultStatus"], a["reason"]) for a in audit.json()["items"]] == [
        (str(run_id), 200, "the registry is back")
    ]
