"""Every dry-run action marks its audit row ``dryRun``: a dry run changed nothing, and the log says
so, also when the dry run was refused after the request said it was one."""

from __future__ import annotations

import pytest

from tests.actions.test_replay import audit_rows, dead_letters

DRY_RUN_ACTIONS = [
    ("/jobengine/deadletter/replay/batch", "deadletter.replay_batch", lambda ids: {"entryIds": ids}),
    ("/jobengine/deadletter/replay/pending", "deadletter.replay_pending", lambda ids: {"filter": {"jobType": "scan"}}),
    ("/jobengine/deadletter/discard/batch", "deadletter.discard_batch", lambda ids: {"entryIds": ids}),
    ("/jobengine/deadletter/discard/pending", "deadletter.discard_pending", lambda ids: {"filter": {"jobType": "scan"}}),
]


@pytest.mark.parametrize(("path", "action", "body"), DRY_RUN_ACTIONS)
async def test_a_dry_run_is_audited_as_one_and_a_real_run_is_not(client, factory, runtime, path, action, body):
    tenant = await factory.tenant()
    ids = [e.entry_id for e in await dead_letters(runtime, tenant, 2)]
    dry = await client.post(path, json={**body(ids), "dryRun": True}, headers=factory.headers(tenant))
    assert dry.status_code == 200 and dry.json()["dryRun"] is True, dry.text
    real = await client.post(path, json=body(ids), headers=factory.headers(tenant))
    assert real.status_code in (200, 202), real.text
    rows = [(r.action, r.result_status, r.dry_run) for r in await audit_rows(runtime, tenant)]
    assert rows == [(action, 200, True), (action, real.status_code, False)]
    listed = (await client.get("/jobengine/audit", params={"action": action}, headers=factory.headers(tenant))).json()
    assert [i["dryRun"] for i in listed["items"]] == [False, True]  # newest first


async def test_a_dry_run_refused_after_it_was_read_is_audited_as_a_dry_run(client, factory, runtime):
    tenant = await factory.tenant()
    response = await client.post(
        "/jobengine/deadletter/replay/pending", json={"filter": {}, "dryRun": True}, headers=factory.headers(tenant)
    )
    assert response.status_code == 400, response.text
    (row,) = await audit_rows(runtime, tenant)
    assert (row.action, row.result_status, row.result_code, row.dry_run) == (
        "deadletter.replay_pending",
        400,
        "validation_failed",
        True,
    )


async def test_other_actions_are_not_dry_runs(client, factory, runtime):
    tenant = await factory.tenant()
    (entry,) = await dead_letters(runtime, tenant, 1)
    assert (await client.post(f"/jobengine/deadletter/{entry.entry_id}/discard", headers=factory.headers(tenant))).status_code == 200
    refused = await client.post(f"/jobengine/deadletter/{entry.entry_id}/discard", headers=factory.headers(tenant))
    assert refused.status_code == 409
    assert [r.dry_run for r in await audit_rows(runtime, tenant)] == [False, False]


async def test_the_replayed_answer_of_a_dry_run_is_audited_as_a_dry_run(client, factory, runtime):
    tenant = await factory.tenant()
    ids = [e.entry_id for e in await dead_letters(runtime, tenant, 2)]
    headers = {**factory.headers(tenant), "Idempotency-Key": "dry-run-twice"}
    for _ in range(2):
        response = await client.post(
            "/jobengine/deadletter/discard/batch", json={"entryIds": ids, "dryRun": True}, headers=headers
        )
        assert response.status_code == 200, response.text
    assert response.headers.get("idempotent-replayed") == "true"
    rows = [(r.result_status, r.result_code, r.dry_run) for r in await audit_rows(runtime, tenant)]
    assert rows == [(200, None, True), (200, "idempotent_replay", True)]
