"""Capture samples/orchestrator-deadletter-replay.json from a running gateway on the demo data.

    .venv/bin/python samples/capture_replay.py

Replays the pending demo entry ``timeout-1`` of tenant ``acme`` (its id is the same in every demo
seed) with ``POST /jobengine/deadletter/{entryId}/replay`` and writes the 202 body.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from capture import capture

from app.seed import demo_id

ENTRY = demo_id("acme", "dead-letter", "timeout-1")

if __name__ == "__main__":
    capture({"orchestrator-deadletter-replay.json": ("POST", f"/jobengine/deadletter/{ENTRY}/replay", None)})
