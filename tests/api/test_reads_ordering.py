"""Every console list walks in its documented order, ties included, each row exactly once;
each filter returns exactly the matching rows; a token is bound to the filters it was issued for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.api.rows import Rows, at, tenant_rows, walk


@dataclass(frozen=True)
class ListSpec:
    path: str
    id_field: str
    seed: Callable[[Rows], list[Any]]  # the rows to insert (with ties on the first sort key)
    sort_key: Callable[[Any], tuple[Any, ...]]
    descending: bool
    row_id: Callable[[Any], Any]

    def expected(self, rows: list[Any], keep: Callable[[Any], bool] = lambda row: True) -> list[Any]:
        ordered = sorted((r for r in rows if keep(r)), key=self.sort_key, reverse=self.descending)
        return [self.row_id(r) for r in ordered]


def seed_sources(rows: Rows) -> list[Any]:
    names = ["beta", "alpha", "beta", "Zulu", "alpha", "beta", "gamma", "alpha", "beta", "delta", "alpha"]
    return [rows.source(name=name, source_type=("scanner", "feed")[i % 2]) for i, name in enumerate(names)]


def seed_quotas(rows: Rows) -> list[Any]:
    # jobType is unique per tenant; quotaIds are random, so the id order differs from the jobType order.
    kinds = ["scan", "export", "index", "Archive", "build", "deploy", "clean", "fetch", "sync", "report"]
    return [rows.quota(kind, paused=i % 3 == 0) for i, kind in enumerate(kinds)]


def seed_jobs(rows: Rows) -> list[Any]:
    statuses = ["pending", "scheduled", "leased", "running", "succeeded", "failed", "canceled", "timed_out"]
    return [
        rows.job(
            created_at=at(i % 3),  # four or five jobs share each createdAt
            status=statuses[i % len(statuses)],
            job_type=("scan", "export")[i % 2],
            source_id="src-c" if i % 3 == 0 else ("src-a", "src-b")[i % 2],
            pack_run_id=None if i % 4 else "pr-1",
        )
        for i in range(14)
    ]


def seed_entries(rows: Rows) -> list[Any]:
    statuses = ["pending", "replaying", "replayed", "discarded"]
    return [
        rows.entry(
            f"timeout after {i} ms calling /v1/items/{i}",
            dead_lettered_at=at(i % 4),  # three or four entries share each deadLetteredAt
            status=statuses[i % 4 if i % 3 else 0],
            job_type=("scan", "export")[i % 2],
            category=("transient", "permanent", "policy")[i % 3],
            error_code=("E_TIMEOUT", "E_DENIED")[i % 5 == 0],
            source_id=("src-a", "src-b")[i % 3 == 1],
        )
        for i in range(14)
    ]


def seed_pack_runs(rows: Rows) -> list[Any]:
    statuses = ["queued", "running", "succeeded", "failed", "canceled"]
    return [
        rows.pack_run(created_at=at(i % 3), status=statuses[i % 5], pack_name=("baseline", "audit")[i % 2])
        for i in range(11)
    ]


def seed_audit(rows: Rows) -> list[Any]:
    actions = ["quota.pause", "quota.resume", "deadletter.replay"]
    return [
        rows.audit(
            occurred_at=at(i % 3),
            action=actions[i % 3],
            subject=("alice", "bob")[i % 2],
            target=("quota-1", "quota-2", None)[i % 3 if i % 4 else 0],
        )
        for i in range(13)
    ]


LISTS = {
    "sources": ListSpec(
        "/jobengine/sources",
        "sourceId",
        seed_sources,
        lambda r: (r.name, r.source_id),
        False,
        lambda r: r.source_id,
    ),
    "quotas": ListSpec(
        "/jobengine/quotas",
        "quotaId",
        seed_quotas,
        lambda r: (r.job_type, r.quota_id),
        False,
        lambda r: r.quota_id,
    ),
    "jobs": ListSpec(
        "/jobengine/jobs", "jobId", seed_jobs, lambda r: (r.created_at, r.job_id), True, lambda r: r.job_id
    ),
    "deadletter": ListSpec(
        "/jobengine/deadletter",
        "entryId",
        seed_entries,
        lambda r: (r.dead_lettered_at, r.entry_id),
        True,
        lambda r: r.entry_id,
    ),
    "pack-runs": ListSpec(
        "/jobengine/pack-runs",
        "packRunId",
        seed_pack_runs,
        lambda r: (r.created_at, r.pack_run_id),
        True,
        lambda r: r.pack_run_id,
    ),
    "audit": ListSpec(
        "/jobengine/audit", "auditId", seed_audit, lambda r: (r.occurred_at, r.id), True, lambda r: r.id
    ),
}


async def seeded(runtime: Any, factory: Any, name: str) -> tuple[str, ListSpec, list[Any]]:
    tenant, rows = await tenant_rows(runtime, factory)
    spec = LISTS[name]
    return tenant, spec, await rows.add(*spec.seed(rows))


@pytest.mark.parametrize("name", list(LISTS))
async def test_walking_every_page_yields_each_row_once_in_the_documented_order_with_ties(
    client, factory, runtime, name
):
    tenant, spec, inserted = await seeded(runtime, factory, name)
    walked = [item[spec.id_field] for item in await walk(client, spec.path, factory.headers(tenant), limit=3)]
    assert len(walked) == len(set(walked)) == len(inserted)
    assert walked == spec.expected(inserted)


@pytest.mark.parametrize("limit", [1, 2, 4, 200])
async def test_jobs_with_one_created_at_walk_by_job_id_desc_whatever_the_page_size(
    client, factory, runtime, limit
):
    tenant, rows = await tenant_rows(runtime, factory)
    jobs = await rows.add(*(rows.job(created_at=at(0)) for _ in range(9)))
    walked = await walk(client, "/jobengine/jobs", factory.headers(tenant), limit=limit)
    assert [j["jobId"] for j in walked] == sorted((j.job_id for j in jobs), reverse=True)


async def test_dead_letter_entries_with_one_timestamp_walk_by_entry_id_desc(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    entries = await rows.add(*(rows.entry(dead_lettered_at=at(5)) for _ in range(10)))
    walked = await walk(
        client, "/jobengine/deadletter", factory.headers(tenant, scope="orch:operate"), limit=3
    )
    assert [e["entryId"] for e in walked] == sorted((e.entry_id for e in entries), reverse=True)


async def test_dead_letter_summary_groups_walk_by_category_then_error_code(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    groups = [(c, e) for c in ("transient", "permanent", "policy") for e in ("E_B", "E_A", "E_C")]
    await rows.add(*(rows.entry(category=c, error_code=e) for c, e in groups for _ in range(2)))
    walked = await walk(
        client, "/jobengine/deadletter/summary", factory.headers(tenant, scope="orch:operate")
    )
    assert [(g["category"], g["errorCode"]) for g in walked] == sorted(groups)
    assert all(g["total"] == 2 for g in walked)


# -- filters ------------------------------------------------------------------------------------

FILTERS: list[tuple[str, dict[str, Any], Callable[[Any], bool]]] = [
    ("jobs", {"status": "failed"}, lambda r: r.status == "failed"),
    ("jobs", {"jobType": "export"}, lambda r: r.job_type == "export"),
    ("jobs", {"sourceId": "src-b"}, lambda r: r.source_id == "src-b"),
    ("jobs", {"packRunId": "pr-1"}, lambda r: r.pack_run_id == "pr-1"),
    (
        "jobs",
        {"jobType": "scan", "sourceId": "src-c"},
        lambda r: r.job_type == "scan" and r.source_id == "src-c",
    ),
    ("deadletter", {"jobType": "export"}, lambda r: r.job_type == "export"),
    ("deadletter", {"category": "policy"}, lambda r: r.category == "policy"),
    ("deadletter", {"errorCode": "E_DENIED"}, lambda r: r.error_code == "E_DENIED"),
    ("deadletter", {"sourceId": "src-b"}, lambda r: r.source_id == "src-b"),
    ("deadletter", {"status": "pending"}, lambda r: r.status == "pending"),
    ("deadletter", {"deadLetteredFrom": at(1).isoformat()}, lambda r: r.dead_lettered_at >= at(1)),
    ("deadletter", {"deadLetteredTo": at(2).isoformat()}, lambda r: r.dead_lettered_at < at(2)),
    (
        "deadletter",
        {"deadLetteredFrom": at(1).isoformat(), "deadLetteredTo": at(3).isoformat(), "category": "transient"},
        lambda r: at(1) <= r.dead_lettered_at < at(3) and r.category == "transient",
    ),
    ("quotas", {"jobType": "index"}, lambda r: r.job_type == "index"),
    ("quotas", {"paused": "true"}, lambda r: r.paused),
    ("quotas", {"paused": "false"}, lambda r: not r.paused),
    ("pack-runs", {"status": "succeeded"}, lambda r: r.status == "succeeded"),
    ("pack-runs", {"packName": "audit"}, lambda r: r.pack_name == "audit"),
    ("audit", {"action": "quota.resume"}, lambda r: r.action == "quota.resume"),
    ("audit", {"subject": "bob"}, lambda r: r.subject == "bob"),
    ("audit", {"target": "quota-2"}, lambda r: r.target == "quota-2"),
    ("audit", {"occurredFrom": at(1).isoformat()}, lambda r: r.occurred_at >= at(1)),
    ("audit", {"occurredTo": at(1).isoformat()}, lambda r: r.occurred_at < at(1)),
    (
        "audit",
        {"occurredFrom": at(1).isoformat(), "occurredTo": at(2).isoformat(), "subject": "alice"},
        lambda r: r.occurred_at == at(1) and r.subject == "alice",
    ),
]


@pytest.mark.parametrize(
    ("name", "params", "keep"), FILTERS, ids=[f"{n}-{'-'.join(p)}" for n, p, _ in FILTERS]
)
async def test_filter_returns_exactly_the_matching_rows_in_order(
    client, factory, runtime, name, params, keep
):
    tenant, spec, inserted = await seeded(runtime, factory, name)
    expected = spec.expected(inserted, keep)
    assert 0 < len(expected) < len(inserted)  # the filter really narrows
    walked = await walk(client, spec.path, factory.headers(tenant), params, limit=2)
    assert [item[spec.id_field] for item in walked] == expected


TOKEN_SWAPS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("sources", {}, {"sourceType": "feed"}),
    ("quotas", {"paused": "false"}, {"paused": "true"}),
    ("quotas", {}, {"jobType": "scan"}),
    ("jobs", {"status": "pending"}, {"status": "failed"}),
    ("jobs", {}, {"jobType": "scan"}),
    ("jobs", {"sourceId": "src-a"}, {"sourceId": "src-b"}),
    ("jobs", {"jobType": "scan"}, {"packRunId": "pr-1"}),
    ("deadletter", {}, {"category": "transient"}),
    ("deadletter", {"jobType": "scan"}, {"jobType": "export"}),
    ("deadletter", {"errorCode": "E_TIMEOUT"}, {"sourceId": "src-a"}),
    ("deadletter", {"status": "pending"}, {"status": "discarded"}),
    ("deadletter", {"deadLetteredFrom": at(0).isoformat()}, {"deadLetteredFrom": at(1).isoformat()}),
    ("deadletter", {"deadLetteredTo": at(3).isoformat()}, {}),
    ("pack-runs", {}, {"status": "queued"}),
    ("pack-runs", {"packName": "baseline"}, {"packName": "audit"}),
    ("audit", {}, {"action": "quota.pause"}),
    ("audit", {"subject": "alice"}, {"subject": "bob"}),
    ("audit", {"target": "quota-1"}, {}),
    ("audit", {"occurredFrom": at(0).isoformat()}, {"occurredTo": at(3).isoformat()}),
]


@pytest.mark.parametrize(
    ("name", "issued_with", "used_with"),
    TOKEN_SWAPS,
    ids=[f"{n}-{'-'.join(a) or 'none'}-to-{'-'.join(b) or 'none'}" for n, a, b in TOKEN_SWAPS],
)
async def test_token_issued_under_one_filter_is_refused_under_another(
    client, factory, runtime, name, issued_with, used_with
):
    tenant, spec, _ = await seeded(runtime, factory, name)
    headers = factory.headers(tenant)
    first = await client.get(spec.path, params={**issued_with, "limit": 1}, headers=headers)
    assert first.status_code == 200, first.text
    token = first.json()["continuationToken"]
    assert token is not None
    # The token still works where it was issued ...
    same = await client.get(
        spec.path, params={**issued_with, "limit": 1, "continuationToken": token}, headers=headers
    )
    assert same.status_code == 200
    # ... and nowhere else.
    swapped = await client.get(
        spec.path, params={**used_with, "limit": 1, "continuationToken": token}, headers=headers
    )
    assert swapped.status_code == 400
    assert swapped.json()["code"] == "invalid_continuation_token"


@pytest.mark.parametrize(
    ("issued_at", "used_at"),
    [
        ("/jobengine/jobs", "/jobengine/pack-runs"),
        ("/jobengine/deadletter", "/jobengine/deadletter/summary"),
        ("/jobengine/deadletter/summary", "/jobengine/deadletter"),
        ("/jobengine/audit", "/jobengine/jobs"),
    ],
)
async def test_token_of_one_list_is_refused_by_another(client, factory, runtime, issued_at, used_at):
    tenant, rows = await tenant_rows(runtime, factory)
    await rows.add(
        *(rows.job() for _ in range(3)),
        *(rows.pack_run() for _ in range(3)),
        *(rows.entry(error_code=f"E_{i}") for i in range(3)),
        *(rows.audit() for _ in range(3)),
    )
    headers = factory.headers(tenant)
    token = (await client.get(issued_at, params={"limit": 1}, headers=headers)).json()["continuationToken"]
    assert token is not None
    refused = await client.get(used_at, params={"limit": 1, "continuationToken": token}, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_continuation_token"


# -- limits, tokens and query values shared by every list ----------------------------------------

EVERY_LIST = [
    "/jobengine/sources",
    "/jobengine/quotas",
    "/jobengine/jobs",
    "/jobengine/deadletter",
    "/jobengine/deadletter/summary",
    "/jobengine/pack-runs",
    "/jobengine/audit",
]


@pytest.mark.parametrize("path", EVERY_LIST)
async def test_every_list_refuses_a_limit_outside_1_to_200_and_a_forged_token(client, factory, path):
    headers = factory.headers(await factory.tenant())
    for limit in (0, 201, -1):
        refused = await client.get(path, params={"limit": limit}, headers=headers)
        assert refused.status_code == 400
        assert refused.json()["code"] == "validation_failed"
    assert (await client.get(path, params={"limit": 200}, headers=headers)).status_code == 200
    forged = await client.get(path, params={"continuationToken": "test.e30.AAAA"}, headers=headers)
    assert forged.status_code == 400
    assert forged.json()["code"] == "invalid_continuation_token"


async def test_walking_jobs_while_new_jobs_arrive_yields_every_earlier_job_once(client, factory, runtime):
    tenant, rows = await tenant_rows(runtime, factory)
    earlier = await rows.add(*(rows.job(created_at=at(i % 2)) for i in range(8)))
    headers = factory.headers(tenant)
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"continuationToken": token} if token else {})}
        page = (await client.get("/jobengine/jobs", params=params, headers=headers)).json()
        seen.extend(j["jobId"] for j in page["items"])
        # Newer jobs, and jobs tied with the rows already served, arrive between pages.
        await rows.add(rows.job(created_at=at(5)), rows.job(created_at=at(1)))
        token = page["continuationToken"]
        if token is None:
            break
    earlier_ids = [j.job_id for j in sorted(earlier, key=lambda j: (j.created_at, j.job_id), reverse=True)]
    assert [i for i in seen if i in set(earlier_ids)] == earlier_ids
    assert len(seen) == len(set(seen))


STRICT_INSTANTS = [
    ("/jobengine/audit", "occurredFrom"),
    ("/jobengine/audit", "occurredTo"),
    ("/jobengine/deadletter", "deadLetteredFrom"),
    ("/jobengine/deadletter", "deadLetteredTo"),
]


@pytest.mark.parametrize(("path", "name"), STRICT_INSTANTS)
async def test_time_filter_refuses_a_bare_number_and_names_the_query_parameter(client, factory, path, name):
    headers = factory.headers(await factory.tenant())
    for value in ("1700000000", "yesterday"):
        refused = await client.get(path, params={name: value}, headers=headers)
        assert refused.status_code == 400, value
        body = refused.json()
        assert body["code"] == "validation_failed"
        assert [e["field"] for e in body["errors"]] == [name]
