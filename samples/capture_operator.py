"""Capture the samples of what operators find, follow and stop, from a gateway on the demo data.

    .venv/bin/python samples/capture_operator.py

Uses ``samples/capture.py`` (a `jobgate serve --demo` on the embedded default in a temporary
directory, tenant `acme`, a development token):

- ``orchestrator-deadletter-entries.json``: the entries of one job (``?jobId=``, a demo job whose
  entry was replayed, so its ``replayJobIds`` are not empty);
- ``orchestrator-deadletter-entry.json``: that entry;
- ``orchestrator-packrun.json``: the failed demo pack run `sbom-refresh 2.0.7` with its steps and
  failure reason;
- ``orchestrator-deadletter-replay-rate.json`` and ``orchestrator-deadletter-replay-cancel.json``:
  a replay by filter of the largest pending error cluster, started at one entry a second, paced at
  two, then canceled (the embedded worker replays some entries in between);
- ``orchestrator-audit.json``: the audit rows of replays by filter, the first a dry run.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from capture import call, gateway, write

from app.seed import demo_id

PACK_RUN = demo_id("acme", "pack-run", "sbom-refresh-failed")


def main() -> None:
    with gateway() as (base, headers):
        replayed = call(base, headers, "GET", "/jobengine/deadletter?status=replayed&limit=1").json()["items"][0]
        write("orchestrator-deadletter-entries.json",
              call(base, headers, "GET", f"/jobengine/deadletter?jobId={replayed['jobId']}"))
        write("orchestrator-deadletter-entry.json",
              call(base, headers, "GET", f"/jobengine/deadletter/{replayed['entryId']}"))
        write("orchestrator-packrun.json", call(base, headers, "GET", f"/jobengine/pack-runs/{PACK_RUN}"))

        clusters = call(base, headers, "GET", "/jobengine/deadletter/stats").json()["topClusters"]
        code = max(clusters, key=lambda c: c["pending"])["errorCode"]
        body = {"filter": {"errorCode": code}, "ratePerSecond": 1}
        call(base, headers, "POST", "/jobengine/deadletter/replay/pending", {**body, "dryRun": True})
        run_id = call(base, headers, "POST", "/jobengine/deadletter/replay/pending", body).json()["operationRunId"]
        write("orchestrator-deadletter-replay-rate.json",
              call(base, headers, "PATCH", f"/jobengine/deadletter/replays/{run_id}", {"ratePerSecond": 2}))
        write("orchestrator-deadletter-replay-cancel.json",
              call(base, headers, "POST", f"/jobengine/deadletter/replays/{run_id}/cancel"))
        write("orchestrator-audit.json",
              call(base, headers, "GET", "/jobengine/audit?action=deadletter.replay_pending"))


if __name__ == "__main__":
    main()
