"""`jobgate ops` reads: each command's table (at a fixed width of 120 columns) and its JSON, which
is the gateway's own payload."""

from __future__ import annotations

import json

from app.ops.client import Gateway, Listing
from app.ops.target import Target
from tests.api.rows import Rows, ago
from tests.ops.conftest import Operator, dead_letters


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def table_width(text: str) -> int:
    return max(len(line) for line in text.splitlines())


async def test_whoami_shows_tenant_subject_scopes_and_expiry_and_never_the_token(operator: Operator):
    result = operator("whoami")
    assert result.code == 0, result.both
    assert lines_with(result.out, "tenant ")[0].split() == ["tenant", operator.tenant]
    assert lines_with(result.out, "subject")[0].split() == ["subject", "ops.alice"]
    assert "orch:backfill" in lines_with(result.out, "scopes")[0]
    assert "(in 59 min)" in lines_with(result.out, "expiresAt")[0] or "(in 1 h 0 min)" in result.out
    assert operator.token not in result.both

    document = operator("whoami", "--output", "json").json()
    assert document["tenant"] == operator.tenant and document["subject"] == "ops.alice"
    assert document["scopes"] == ["orch:read", "orch:quota", "orch:operate", "orch:backfill", "orch:submit"]
    assert document["expired"] is False and 3500 < document["expiresInSeconds"] <= 3600


async def test_whoami_says_when_the_token_has_expired(operator: Operator, keys):
    expired = keys.token(tenant=operator.tenant, scope="orch:read", sub="ops.bob", exp=1_700_000_000)
    result = operator("whoami", JOBGATE_TOKEN=expired)
    assert result.code == 1
    assert "2023-11-14T22:13:20Z (expired)" in result.out


async def test_deadletter_stats_prints_totals_and_the_largest_clusters(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 3, error_code="E_REGISTRY", category="transient")
    await dead_letters(runtime, operator.tenant, 2, error_code="E_AUTH", category="auth")
    result = operator("deadletter", "stats")
    assert result.code == 0, result.both
    assert table_width(result.out) <= 120
    totals = result.out.splitlines()[result.out.splitlines().index(lines_with(result.out, "total")[0]) + 2]
    assert totals.split()[:5] == ["5", "5", "0", "0", "0"]
    clusters = result.out[result.out.index("Top error clusters"):]
    assert lines_with(clusters, "E_REGISTRY")[0].split()[:3] == ["E_REGISTRY", "3", "3"]
    assert lines_with(clusters, "E_AUTH")[0].split()[:3] == ["E_AUTH", "2", "2"]

    payload = operator("deadletter", "stats", "-o", "json").json()
    api = operator.api("GET", "/jobengine/deadletter/stats").json()
    age = "oldestPendingAgeSeconds"  # read a moment apart
    assert abs(payload.pop(age) - api.pop(age)) <= 5 and payload == api


async def test_deadletter_list_shows_whole_ids_and_its_json_is_the_api_page(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 3, error_code="E_LIST")
    result = operator("deadletter", "list")
    assert result.code == 0, result.both
    assert table_width(result.out) <= 120
    for entry in entries:
        assert lines_with(result.out, entry.entry_id)[0].split()[1:4] == ["pending", "scan", "E_LIST"]

    page = operator("deadletter", "list", "--output", "json").json()
    assert page == operator.api("GET", "/jobengine/deadletter", params={"limit": 50}).json()
    assert page["continuationToken"] is None and len(page["items"]) == 3


async def test_deadletter_list_filters_with_the_api_field_names(operator: Operator, runtime):
    wanted = await dead_letters(runtime, operator.tenant, 2, error_code="E_WANTED", job_type="scan.deep")
    await dead_letters(runtime, operator.tenant, 2, error_code="E_OTHER")
    result = operator("deadletter", "list", "--filter", "errorCode=E_WANTED", "--filter", "jobType=scan.deep", "-o", "ndjson")
    assert result.code == 0, result.both
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert sorted(item["entryId"] for item in lines) == sorted(e.entry_id for e in wanted)


async def test_deadletter_list_stops_at_the_limit_and_hands_back_the_continuation(operator: Operator, runtime):
    entries = await dead_letters(runtime, operator.tenant, 7, error_code="E_MANY")
    page = operator("deadletter", "list", "--limit", "5", "-o", "json").json()
    assert len(page["items"]) == 5 and page["continuationToken"]
    rest = operator.api(
        "GET", "/jobengine/deadletter", params={"limit": 50, "continuationToken": page["continuationToken"]}
    ).json()
    assert sorted(i["entryId"] for i in page["items"] + rest["items"]) == sorted(e.entry_id for e in entries)


async def test_pages_are_fetched_only_as_items_are_consumed(operator: Operator, runtime, monkeypatch):
    await dead_letters(runtime, operator.tenant, 5, error_code="E_LAZY")
    monkeypatch.setattr(Listing, "PAGE", 2)
    requests: list[str] = []
    gateway = Gateway(Target(operator.url, operator.tenant, None, operator.token), log=requests.append)
    try:
        listing = iter(gateway.pages("/jobengine/deadletter", {"errorCode": "E_LAZY"}))
        first_three = [next(listing) for _ in range(3)]
        assert len([r for r in requests if r.startswith("->")]) == 2
        rest = list(listing)
        assert len([r for r in requests if r.startswith("->")]) == 3
    finally:
        gateway.close()
    assert len({e["entryId"] for e in first_three + rest}) == 5


async def test_deadletter_show_prints_one_entry_and_its_json_is_the_api_payload(operator: Operator, runtime):
    (entry,) = await dead_letters(runtime, operator.tenant, 1, error_code="E_SHOW")
    result = operator("deadletter", "show", entry.entry_id)
    assert result.code == 0, result.both
    assert lines_with(result.out, "entryId")[0].split() == ["entryId", entry.entry_id]
    assert lines_with(result.out, "errorCode")[0].split() == ["errorCode", "E_SHOW"]
    document = operator("deadletter", "show", entry.entry_id, "-o", "json").json()
    assert document == operator.api("GET", f"/jobengine/deadletter/{entry.entry_id}").json()


async def test_jobs_list_and_show(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    source = rows.source()
    jobs = [rows.job(source_id=source.source_id, job_type="report", status=s) for s in ("pending", "failed")]
    await rows.add(source, *jobs)
    result = operator("jobs", "list", "--filter", "status=failed")
    assert result.code == 0, result.both
    assert [line.split()[:3] for line in lines_with(result.out, "report")] == [[jobs[1].job_id, "failed", "report"]]
    page = operator("jobs", "list", "-o", "json").json()
    assert page == operator.api("GET", "/jobengine/jobs", params={"limit": 50}).json()
    shown = operator("jobs", "show", jobs[0].job_id)
    assert lines_with(shown.out, "status")[0].split() == ["status", "pending"]
    assert operator("jobs", "show", jobs[0].job_id, "-o", "json").json() == operator.api(
        "GET", f"/jobengine/jobs/{jobs[0].job_id}"
    ).json()


async def test_quotas_list(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    paused = rows.quota("export", paused=True, paused_by="ops.carol", paused_reason="upstream down", paused_at=ago(minutes=3))
    await rows.add(paused, rows.quota("import"))
    result = operator("quotas", "list")
    assert result.code == 0, result.both
    assert lines_with(result.out, paused.quota_id)[0].split() == [
        paused.quota_id, "export", "10", "1000", "yes", "(ops.carol)", "upstream", "down"
    ]
    assert operator("quotas", "list", "-o", "json").json() == operator.api(
        "GET", "/jobengine/quotas", params={"limit": 50}
    ).json()
    only_paused = operator("quotas", "list", "--filter", "paused=true", "-o", "ndjson")
    assert [json.loads(line)["quotaId"] for line in only_paused.out.splitlines()] == [paused.quota_id]


async def test_packruns_list_and_show(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    run = rows.pack_run(pack_name="nightly", status="running", steps_total=3, steps_succeeded=1)
    await rows.add(run)
    result = operator("packruns", "list")
    assert result.code == 0, result.both
    assert lines_with(result.out, run.pack_run_id)[0].split()[:6] == [
        run.pack_run_id, "nightly", "running", "1/3", "ok,", "0"
    ]
    shown = operator("packruns", "show", run.pack_run_id)
    assert lines_with(shown.out, "packName")[0].split() == ["packName", "nightly"]
    assert operator("packruns", "show", run.pack_run_id, "-o", "json").json() == operator.api(
        "GET", f"/jobengine/pack-runs/{run.pack_run_id}"
    ).json()


async def test_runs_list_and_show(operator: Operator, runtime):
    await dead_letters(runtime, operator.tenant, 2, error_code="E_RUNS")
    entries = [e["entryId"] for e in operator.api("GET", "/jobengine/deadletter").json()["items"]]
    replay = operator("deadletter", "replay", *entries, "--reason", "runs list test")
    assert replay.code == 0, replay.both
    page = operator("runs", "list", "-o", "json").json()
    (run,) = [r for r in page["data"] if r["type"] == "deadletter.replay_batch"]
    assert page == operator.api("GET", "/api/admin/operations", params={"limit": 50}).json()
    listed = operator("runs", "list")
    assert lines_with(listed.out, "deadletter.replay_batch")[0].split()[:4] == [
        str(run["id"]), "deadletter.replay_batch", "completed", "succeeded"
    ]
    shown = operator("runs", "show", str(run["id"]))
    assert lines_with(shown.out, "summary_counts")[0].split()[1] == (
        '{"not_found":0,"replayed":2,"skipped":0,"total":2}'
    )


async def test_audit_list_filters_by_action_and_target(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    quotas = [rows.quota("export"), rows.quota("import")]
    await rows.add(*quotas)
    for quota in quotas:
        paused = operator("quotas", "pause", quota.quota_id, "--reason", "upstream down", "--ticket", "OPS-7")
        assert paused.code == 0, paused.both
    result = operator("audit", "list", "--action", "quota.pause", "--target", quotas[0].quota_id)
    assert result.code == 0, result.both
    (row,) = lines_with(result.out, "quota.pause")
    assert row.split()[3:] == ["quota.pause", quotas[0].quota_id, "ops.alice", "200", "upstream", "down", "OPS-7"]
    page = operator("audit", "list", "--action", "quota.pause", "-o", "json").json()
    assert {r["target"] for r in page["items"]} == {q.quota_id for q in quotas}
    assert page == operator.api("GET", "/jobengine/audit", params={"limit": 50, "action": "quota.pause"}).json()
