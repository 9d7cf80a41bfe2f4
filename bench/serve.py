"""Serve an ASGI app factory under granian exactly as ``jobgate serve`` does (see app/cli.py).

Usage: ``python bench/serve.py bench.baseline_db:create_app PORT``
"""

from __future__ import annotations

import sys

from granian import Granian
from granian.constants import Interfaces


def main() -> None:
    target, port = sys.argv[1], int(sys.argv[2])
    Granian(
        target,
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        factory=True,
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
