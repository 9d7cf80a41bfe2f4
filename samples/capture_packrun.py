"""Capture the pack-run action samples (cancel, retry) from a gateway on the demo data.

    .venv/bin/python samples/capture_packrun.py

Uses ``samples/capture.py`` (a `jobgate serve --demo` on the embedded default in a temporary
directory, tenant `acme`, a development token): cancels the queued demo run `nightly-scan 1.4.0`
(answered 200, `canceled`) and retries the failed demo run `sbom-refresh 2.0.7` (answered 201, a
new run with `retryOf`).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from capture import capture

from app.seed import demo_id

SAMPLES = {
    "orchestrator-packrun-cancel.json": (
        "POST", f"/jobengine/pack-runs/{demo_id('acme', 'pack-run', 'nightly-scan-queued')}/cancel", None,
    ),
    "orchestrator-packrun-retry.json": (
        "POST", f"/jobengine/pack-runs/{demo_id('acme', 'pack-run', 'sbom-refresh-failed')}/retry", None,
    ),
}

if __name__ == "__main__":
    capture(SAMPLES)
