"""The README's dead-letter incident runs as written against a fresh `jobgate serve --demo` (the
embedded default, as `./scripts/serve` starts it), each command exiting 0."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from tests.conftest import ROOT, free_port
from tests.ops.conftest import plain
from tests.test_embedded import EmbeddedGateway


def incident_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Operators"): readme.index("## Routes")]
    block = section[section.index("```sh") + 5: section.index("```", section.index("```sh") + 5)]
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        if line.startswith(".venv/bin/jobgate ops "):
            words = shlex.split(line, comments=True)
            commands.append([sys.executable, "-m", "app.cli", *words[1:]])
    return commands


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[EmbeddedGateway, dict[str, str]]]:
    gateway = EmbeddedGateway(tmp_path, free_port())
    try:
        gateway.wait_until(gateway.healthy)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGATE_")}
        token = subprocess.run(
            [sys.executable, "-m", "app.cli", "token", "--tenant", "acme"], cwd=tmp_path, env=env,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        yield gateway, {**env, "JOBGATE_TOKEN": token, "JOBGATE_URL": gateway.url, "COLUMNS": "120",
                        "PYTHONPATH": str(ROOT)}
    finally:
        gateway.stop()


def test_the_readme_incident_runs_as_written(demo) -> None:  # type: ignore[no-untyped-def]
    gateway, env = demo
    commands = incident_commands()
    assert len(commands) == 11
    for command in commands:
        confirm = "--filter" in command and ("replay" in command or "discard" in command) and "--yes" not in command
        if confirm:  # asks on the terminal: answered as the operator would
            child = pexpect.spawn(command[0], command[1:], env=env, cwd=str(gateway.workdir), dimensions=(40, 120),
                                  encoding="utf-8", timeout=90)
            child.expect(r"Replay 5 entries\? \[y/N\]")
            child.sendline("y")
            child.expect(pexpect.EOF)
            child.close()
            output = plain(child.before)
            assert child.exitstatus == 0, (command, output)
            assert "matched 5, replayed 5, skipped 0" in output
        else:
            done = subprocess.run(command, env=env, cwd=gateway.workdir, capture_output=True, text=True, timeout=120,
                                  check=False)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
    audit = subprocess.run(
        [sys.executable, "-m", "app.cli", "ops", "audit", "list", "-o", "json", "--limit", "0"],
        env=env, cwd=gateway.workdir, capture_output=True, text=True, check=True,
    ).stdout
    assert audit.count('"ticket": "INC-4711"') >= 4
