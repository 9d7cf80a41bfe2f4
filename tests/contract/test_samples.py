"""The samples in samples/ are real gateway responses and validate against the contract."""

from __future__ import annotations

import json
import re

import jsonschema_rs
import pytest
import yaml

from tests.conftest import ROOT

CONTRACT = yaml.safe_load((ROOT / "contracts" / "jobengine-gateway.openapi.yaml").read_text())
SAMPLES = ROOT / "samples"

# sample -> (method, path template, status) of the operation it was captured from
OPERATIONS = {
    "orchestrator-sources.json": ("get", "/jobengine/sources", "200"),
    "orchestrator-quotas.json": ("get", "/jobengine/quotas", "200"),
    "orchestrator-quota-summary.json": ("get", "/jobengine/quotas/summary", "200"),
    "orchestrator-deadletter-stats.json": ("get", "/jobengine/deadletter/stats", "200"),
    "orchestrator-deadletter-summary.json": ("get", "/jobengine/deadletter/summary", "200"),
    "orchestrator-deadletter-replay.json": ("post", "/jobengine/deadletter/{entryId}/replay", "202"),
    "orchestrator-packrun-cancel.json": ("post", "/jobengine/pack-runs/{packRunId}/cancel", None),
    "orchestrator-packrun-retry.json": ("post", "/jobengine/pack-runs/{packRunId}/retry", None),
    "orchestrator-workers.json": ("get", "/jobengine/workers", "200"),
    "orchestrator-jobs-waiting.json": ("get", "/jobengine/jobs", "200"),
    "orchestrator-jobs-summary.json": ("get", "/jobengine/jobs/summary", "200"),
    "orchestrator-job-submit-warning.json": ("post", "/jobengine/jobs", "201"),
    "orchestrator-job-cancel.json": ("post", "/jobengine/jobs/{jobId}/cancel", "200"),
    "orchestrator-job-cancel-requested.json": ("post", "/jobengine/jobs/{jobId}/cancel", "202"),
    "orchestrator-deadletter-entries.json": ("get", "/jobengine/deadletter", "200"),
    "orchestrator-deadletter-entry.json": ("get", "/jobengine/deadletter/{entryId}", "200"),
    "orchestrator-packrun.json": ("get", "/jobengine/pack-runs/{packRunId}", "200"),
    "orchestrator-audit.json": ("get", "/jobengine/audit", "200"),
    "orchestrator-deadletter-replay-rate.json": ("patch", "/jobengine/deadletter/replays/{operationRunId}", "200"),
    "orchestrator-deadletter-replay-cancel.json": (
        "post", "/jobengine/deadletter/replays/{operationRunId}/cancel", "200",
    ),
}
READ_SAMPLES = [name for name, (method, _, _) in OPERATIONS.items() if method == "get"]


def response_schema(method: str, path: str, status: str | None) -> dict:
    responses = CONTRACT["paths"][path][method]["responses"]
    if status is None:
        status = next(code for code in sorted(responses) if re.fullmatch(r"2\d\d", code) and "content" in responses[code])
    schema = responses[status]["content"]["application/json"]["schema"]
    return {**schema, "components": CONTRACT["components"]}


@pytest.mark.parametrize("name", READ_SAMPLES)
def test_read_sample_exists_and_validates_against_the_contract(name):
    sample = json.loads((SAMPLES / name).read_text())
    method, path, status = OPERATIONS[name]
    jsonschema_rs.validate(response_schema(method, path, status), sample)


def test_every_present_sample_validates_against_the_contract():
    present = sorted(p.name for p in SAMPLES.glob("orchestrator-*.json"))
    assert set(READ_SAMPLES) <= set(present)
    for name in present:
        method, path, status = OPERATIONS[name]
        if path not in CONTRACT["paths"]:
            pytest.fail(f"{name} was captured from {path}, which is not in the contract")
        jsonschema_rs.validate(response_schema(method, path, status), json.loads((SAMPLES / name).read_text()))


def test_samples_are_not_empty_demo_answers():
    sources = json.loads((SAMPLES / "orchestrator-sources.json").read_text())
    assert sources["items"] and sources["continuationToken"]
    stats = json.loads((SAMPLES / "orchestrator-deadletter-stats.json").read_text())
    assert stats["topClusters"] and all(len(c["sampleEntryIds"]) <= 3 for c in stats["topClusters"])
    summary = json.loads((SAMPLES / "orchestrator-deadletter-summary.json").read_text())
    keys = [(g["category"], g["errorCode"]) for g in summary["items"]]
    assert keys == sorted(keys)
    workers = json.loads((SAMPLES / "orchestrator-workers.json").read_text())
    assert workers["items"] and "demo.noop" in workers["items"][0]["jobTypes"]
    waiting = json.loads((SAMPLES / "orchestrator-jobs-waiting.json").read_text())
    assert {j["waitingReason"] for j in waiting["items"]} == {"scheduled"}
    submitted = json.loads((SAMPLES / "orchestrator-job-submit-warning.json").read_text())
    assert submitted["warnings"] == ["no_worker_for_job_type"]
    canceled = json.loads((SAMPLES / "orchestrator-job-cancel.json").read_text())
    requested = json.loads((SAMPLES / "orchestrator-job-cancel-requested.json").read_text())
    assert (canceled["status"], requested["status"]) == ("canceled", "cancel_requested")


def test_operator_samples_show_what_they_were_captured_for():
    def sample(name: str) -> dict:
        return json.loads((SAMPLES / name).read_text())

    (entry,) = sample("orchestrator-deadletter-entries.json")["items"]
    assert entry["replayJobIds"] and entry == sample("orchestrator-deadletter-entry.json")
    pack_run = sample("orchestrator-packrun.json")
    assert pack_run["status"] == "failed" and pack_run["failureReason"]
    assert [s["index"] for s in pack_run["steps"]] == list(range(len(pack_run["steps"])))
    assert any(s["lastErrorCode"] for s in pack_run["steps"])
    audit = sample("orchestrator-audit.json")["items"]
    assert sorted(a["dryRun"] for a in audit) == [False, True]
    canceled = sample("orchestrator-deadletter-replay-cancel.json")
    assert (canceled["status"], canceled["outcome"]) == ("completed", "failed")
    assert canceled["replayed"] + canceled["skipped"] + canceled["failed"] + canceled["canceled"] == canceled["matched"]
    assert sample("orchestrator-deadletter-replay-rate.json")["ratePerSecond"] == canceled["ratePerSecond"] == 2
