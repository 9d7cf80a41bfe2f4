"""A DPoP-bound token opens GET /jobengine/events with a proof checked at connect time only: without
one the stream is refused with the DPoP challenge; with one, the open stream keeps delivering
changes long after the proof would be refused, since nothing re-checks it per event."""

from __future__ import annotations

import time

from app.security.dpop import ProofVerifier
from tests.api.rows import Rows
from tests.feed.support import StreamingASGITransport, stream
from tests.support.keys import DPoPKey

EVENTS = "/jobengine/events"
HTU = "http://gateway.test" + EVENTS


def dpop_headers(token: str, tenant: str, proof: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"DPoP {token}", "X-Stella-Tenant": tenant}
    if proof is not None:
        headers["DPoP"] = proof
    return headers


async def test_a_dpop_bound_stream_needs_its_proof_at_connect_and_only_then(
    client, app, factory, keys, runtime, monkeypatch
):
    tenant = await factory.tenant()
    key = DPoPKey.generate()
    token = keys.token(tenant=tenant, scope="orch:read", cnf={"jkt": key.thumbprint})

    refused = await client.get(EVENTS, headers=dpop_headers(token, tenant))
    assert refused.status_code == 401, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "invalid_dpop_proof"
    assert 'DPoP algs="' in refused.headers["www-authenticate"]
    assert 'error="invalid_dpop_proof"' in refused.headers["www-authenticate"]

    clock = [time.time()]
    monkeypatch.setattr(runtime, "proofs", ProofVerifier(runtime.store, clock=lambda: clock[0]))
    connected_at = clock[0]
    proof = key.proof("GET", HTU, token, iat=connected_at)
    rows = await Rows.of(runtime, tenant)
    async with stream(HTU, dpop_headers(token, tenant, proof), StreamingASGITransport(app), kinds="source") as events:
        clock[0] = connected_at + 3600  # an hour on: a proof of that instant is far outside its window
        late = await client.get(EVENTS, headers=dpop_headers(token, tenant, key.proof("GET", HTU, token,
                                                                                        iat=connected_at)))
        assert late.status_code == 401 and late.json()["code"] == "invalid_dpop_proof", late.text
        for _ in range(3):
            (source,) = await rows.add(rows.source())
            event = await events.next_event()
            assert (event.event, event.json()["id"]) == ("source.changed", source.source_id)
