"""Serve an ASGI app factory under granian exactly as ``jobgate serve`` does (see app/cli.py).

Usage: ``python bench/serve.py bench.baseline_db:create_app PORT``

The app gets the process set-up of a gateway worker (``app.server.create_served_app``): once it
has started, its long-lived objects are frozen out of the garbage collector's generations.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from granian import Granian
from granian.constants import Interfaces

from app.server import freeze_long_lived

TARGET = "BENCH_SERVE_TARGET"


def served_app() -> Any:
    module, _, name = os.environ[TARGET].partition(":")
    app = getattr(importlib.import_module(module), name)()
    app.on_startup.append(freeze_long_lived)
    return app


def main() -> None:
    target, port = sys.argv[1], int(sys.argv[2])
    os.environ[TARGET] = target
    Granian(
        "bench.serve:served_app",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        factory=True,
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
