"""A console in a real browser: its cache never crosses tenants or callers, it sees its own
changes when it follows docs/consoles.md, and CORS grants exactly what a console needs."""

from __future__ import annotations

from tests.browser.conftest import RATE_LIMIT, open_console
from tests.conftest import ALL_SCOPES
from tests.support.keys import DPoPKey

SOURCES = "/jobengine/sources?limit=1"


async def test_a_tenant_switch_on_the_same_url_never_shows_the_other_tenants_data(
    browser, browser_gateway, page_origins, client, factory, keys
):
    acme, globex = await factory.tenant(), await factory.tenant()
    await factory.source(client, acme, name="only-acme")
    await factory.source(client, globex, name="only-globex")
    token = keys.token(tenant=[acme, globex], scope=ALL_SCOPES, sub="console-user")
    page = await open_console(browser, page_origins[0], browser_gateway, token)

    # The browser's default cache mode: a fresh cached answer may be reused only when every
    # member of its Vary matches.
    first = await page.evaluate("([p, t]) => show(p, t, 'name')", [SOURCES, acme])
    assert first["status"] == 200 and await page.evaluate("shown()") == ["only-acme"]
    second = await page.evaluate("([p, t]) => show(p, t, 'name')", [SOURCES, globex])
    assert second["status"] == 200 and await page.evaluate("shown()") == ["only-globex"]
    again = await page.evaluate("([p, t]) => show(p, t, 'name')", [SOURCES, acme])
    assert again["status"] == 200 and await page.evaluate("shown()") == ["only-acme"]

    # Another caller on the same browser profile, whose token grants only globex, asks for acme.
    other = keys.token(tenant=[globex], scope=ALL_SCOPES, sub="someone-else")
    await page.evaluate("t => { token = t; }", other)
    refused = await page.evaluate("([p, t]) => call('GET', p, {tenant: t})", [SOURCES, acme])
    assert refused["status"] == 403, refused


async def test_a_console_that_rereads_with_no_cache_after_a_mutation_sees_it(
    browser, browser_gateway, page_origins, client, factory, keys
):
    tenant = await factory.tenant()
    created = await client.post(
        "/jobengine/quotas",
        json={"jobType": "scan", "maxActive": 2, "maxPerHour": 60, "burst": 5},
        headers=factory.headers(tenant),
    )
    assert created.status_code == 201, created.text
    quota_id = created.json()["quotaId"]
    page = await open_console(
        browser, page_origins[0], browser_gateway, keys.token(tenant=tenant, scope=ALL_SCOPES)
    )

    listed = await page.evaluate("t => show('/jobengine/quotas', t, 'paused')", tenant)
    assert listed["headers"]["Cache-Control"].startswith("private, max-age=60")
    assert await page.evaluate("shown()") == ["false"]

    paused = await page.evaluate(
        """([t, id]) => call('POST', `/jobengine/quotas/${id}/pause`, {tenant: t, headers: {
             'X-Stella-Operator-Reason': 'holding scans', 'X-Stella-Operator-Ticket': 'OPS-1',
             'Idempotency-Key': crypto.randomUUID()}})""",
        [tenant, quota_id],
    )
    assert paused["status"] == 200 and paused["body"]["paused"] is True

    # docs/consoles.md: re-read with cache "no-cache" (a revalidation, 304 when nothing changed).
    reread = await page.evaluate("t => show('/jobengine/quotas', t, 'paused', 'no-cache')", tenant)
    assert reread["status"] == 200
    assert await page.evaluate("shown()") == ["true"]


async def test_a_conditional_reread_is_answered_304_and_the_page_still_renders(
    browser, browser_gateway, page_origins, client, factory, keys
):
    tenant = await factory.tenant()
    await factory.source(client, tenant, name="kept")
    page = await open_console(
        browser, page_origins[0], browser_gateway, keys.token(tenant=tenant, scope=ALL_SCOPES)
    )

    assert await page.evaluate("t => showConditional('/jobengine/sources', t, 'name')", tenant) == 200
    await page.evaluate("render([], 'name')")
    assert await page.evaluate("t => showConditional('/jobengine/sources', t, 'name')", tenant) == 304
    assert await page.evaluate("shown()") == ["kept"]

    await factory.source(client, tenant, name="added")
    assert await page.evaluate("t => showConditional('/jobengine/sources', t, 'name')", tenant) == 200
    assert sorted(await page.evaluate("shown()")) == ["added", "kept"]


async def test_preflights_allow_every_header_a_console_sends(
    browser, browser_gateway, page_origins, client, factory, keys
):
    tenant = await factory.tenant()
    source = await factory.source(client, tenant, name="preflighted", projectId="p1")
    dpop = DPoPKey.generate()
    token = keys.token(tenant=tenant, scope=ALL_SCOPES, cnf={"jkt": dpop.thumbprint})
    path = f"/jobengine/sources/{source['sourceId']}"
    etag = (await client.get(path, headers=factory.headers(tenant, project="p1"))).headers["etag"]
    page = await open_console(browser, page_origins[0], browser_gateway, token)

    # Every header at once: the browser sends one preflight naming them all; a single header
    # the gateway does not allow fails the whole request as a network error.
    answer = await page.evaluate(
        """([t, p, proof, token, etag]) => call('PUT', p, {tenant: t, headers: {
             'Authorization': `DPoP ${token}`, 'DPoP': proof, 'X-Stella-Project': 'p1',
             'X-Stella-Operator-Reason': 'rename', 'X-Stella-Operator-Ticket': 'OPS-2',
             'Idempotency-Key': crypto.randomUUID(), 'If-Match': etag, 'If-None-Match': '"x"',
             'X-Stella-Trace-Id': 'a'.repeat(32)},
           body: {name: 'renamed', sourceType: 'scanner', projectId: 'p1', enabled: true, description: null}})""",
        [tenant, path, dpop.proof("PUT", browser_gateway.url + path, token), token, etag],
    )
    assert answer["status"] == 200, answer
    assert answer["body"]["name"] == "renamed"
    assert answer["headers"]["X-Stella-Trace-Id"] == "a" * 32


async def test_etag_location_retry_after_and_trace_id_are_readable_by_the_page(
    browser, browser_gateway, page_origins, keys, factory, client
):
    tenant = await factory.tenant()
    page = await open_console(
        browser, page_origins[0], browser_gateway, keys.token(tenant=tenant, scope=ALL_SCOPES)
    )

    listed = await page.evaluate("t => call('GET', '/jobengine/sources', {tenant: t})", tenant)
    assert listed["headers"]["ETag"].startswith('"')
    assert len(listed["headers"]["X-Stella-Trace-Id"]) == 32

    created = await page.evaluate(
        """t => call('POST', '/jobengine/sources', {tenant: t, body: {name: 'located', sourceType: 'scanner'},
             headers: {'X-Stella-Operator-Reason': 'onboarding', 'Idempotency-Key': crypto.randomUUID()}})""",
        tenant,
    )
    assert created["status"] == 201
    assert (
        created["headers"]["Location"]
        == f"{browser_gateway.url}/jobengine/sources/{created['body']['sourceId']}"
    )

    # Past the tenant's budget: a 429 whose Retry-After the page can read.
    statuses = await page.evaluate(
        """async ([t, n]) => {
             const seen = [];
             for (let i = 0; i < n; i++) {
               const a = await call('GET', '/jobengine/sources?limit=1', {tenant: t, cache: 'no-store'});
               seen.push([a.status, a.headers['Retry-After']]);
               if (a.status === 429) break;
             }
             return seen;
           }""",
        [tenant, RATE_LIMIT + 5],
    )
    status, retry_after = statuses[-1]
    assert status == 429, statuses
    assert retry_after is not None and int(retry_after) >= 1


async def test_an_origin_not_on_the_list_gets_no_cors_grant(
    browser, browser_gateway, page_origins, keys, factory
):
    tenant = await factory.tenant()
    page = await open_console(
        browser, page_origins[1], browser_gateway, keys.token(tenant=tenant, scope=ALL_SCOPES)
    )
    outcome = await page.evaluate(
        "t => call('GET', '/jobengine/sources', {tenant: t}).then(() => 'answered', e => e.name)", tenant
    )
    assert outcome == "TypeError"  # the browser withholds the answer: a network error to the page


async def test_a_console_may_pace_and_cancel_a_replay_by_filter(
    browser, browser_gateway, page_origins, client, factory, keys
):
    """PATCH is a method the preflight grants: a console changes a replay's pace, then cancels it."""
    from tests.api.rows import Rows

    tenant = await factory.tenant()
    rows = await Rows.of(factory.runtime, tenant)
    source = rows.source()
    await rows.add(source, *(rows.entry(source_id=source.source_id, error_code="E_CONSOLE") for _ in range(5)))
    started = await client.post(
        "/jobengine/deadletter/replay/pending",
        json={"filter": {"errorCode": "E_CONSOLE"}, "ratePerSecond": 1},
        headers=factory.headers(tenant),
    )
    assert started.status_code == 202, started.text
    run = f"/jobengine/deadletter/replays/{started.json()['operationRunId']}"
    page = await open_console(browser, page_origins[0], browser_gateway, keys.token(tenant=tenant, scope=ALL_SCOPES))
    paced = await page.evaluate(
        """([t, p]) => call('PATCH', p, {tenant: t, headers: {'X-Stella-Operator-Reason': 'slower'},
           body: {ratePerSecond: 2}})""",
        [tenant, run],
    )
    assert paced["status"] == 200, paced
    assert paced["body"]["ratePerSecond"] == 2
    canceled = await page.evaluate(
        "([t, p]) => call('POST', p, {tenant: t, headers: {'X-Stella-Operator-Reason': 'wrong filter'}})",
        [tenant, run + "/cancel"],
    )
    assert canceled["status"] == 200, canceled
    assert canceled["body"]["status"] == "completed"
