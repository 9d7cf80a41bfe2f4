"""Capture the samples of job cancel, workers, waiting reasons and submission warnings from a
gateway on the demo data.

    .venv/bin/python samples/capture_jobs.py

Uses ``samples/capture.py`` (a `jobgate serve --demo` on the embedded default in a temporary
directory, tenant `acme`, a development token; its embedded worker registers as the one worker):
lists the workers, the scheduled jobs with their `waitingReason`, the job and quota summaries with
their waiting counts; submits a job of a type no worker serves (answered 201 with a warning);
cancels the scheduled demo job `scheduled-sleep` (200, `canceled`) and the demo job whose cancel
was already requested (202, `cancel_requested`).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from capture import capture

from app.seed import ENABLED_SOURCES, demo_id

SAMPLES = {
    "orchestrator-workers.json": ("GET", "/jobengine/workers", None),
    "orchestrator-jobs-waiting.json": ("GET", "/jobengine/jobs?status=scheduled&limit=3", None),
    "orchestrator-jobs-summary.json": ("GET", "/jobengine/jobs/summary", None),
    "orchestrator-quota-summary.json": ("GET", "/jobengine/quotas/summary", None),
    "orchestrator-job-submit-warning.json": (
        "POST", "/jobengine/jobs", {"jobType": "reports.render", "sourceId": demo_id("acme", "source", ENABLED_SOURCES[0])},
    ),
    "orchestrator-job-cancel.json": ("POST", f"/jobengine/jobs/{demo_id('acme', 'job', 'scheduled-sleep')}/cancel", None),
    "orchestrator-job-cancel-requested.json": (
        "POST", f"/jobengine/jobs/{demo_id('acme', 'job', 'cancel-requested-sleep')}/cancel", None,
    ),
}

if __name__ == "__main__":
    capture(SAMPLES)
