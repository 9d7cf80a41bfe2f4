"""Gateway processes started as in production (``jobgate serve``), and the readers of their output."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from tests.conftest import GatewayProcess, free_port


class Served(GatewayProcess):
    """``jobgate serve ARGS`` on a free port with the test settings (see ``GatewayProcess``)."""

    def __init__(self, env: dict[str, str], *args: str, **overrides: str) -> None:
        super().__init__(env, free_port(), *args, **overrides)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output().splitlines() if line.startswith("{")]

    def close(self) -> None:
        self.kill()
        os.unlink(self.log.name)


def wait_until(check: Any, *, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not reached within {timeout}s (last value: {value!r})")


def samples(exposition: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of one metric in an exposition text: labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[frozenset[tuple[str, str]], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                found[frozenset(sample.labels.items())] = sample.value
    return found
