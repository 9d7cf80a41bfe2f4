"""How `jobgate ops` connects and fails: profiles, the token that is never shown, problem blocks,
the exit codes, and the help of every command."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from app.ops.commands import ops
from tests.api.rows import Rows
from tests.conftest import free_port
from tests.ops.conftest import Operator, dead_letters
from tests.ops.proxy import Plan, proxy


def commands_of(group, prefix=()):  # type: ignore[no-untyped-def]
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from commands_of(command, (*prefix, name))
        else:
            yield (*prefix, name)


COMMANDS = list(commands_of(ops))


def test_every_command_of_the_spec_exists() -> None:
    assert COMMANDS == [
        ("audit", "list"),
        ("deadletter", "discard"), ("deadletter", "list"), ("deadletter", "replay"), ("deadletter", "restore"),
        ("deadletter", "show"), ("deadletter", "stats"),
        ("jobs", "cancel"), ("jobs", "list"), ("jobs", "show"), ("jobs", "why"),
        ("packruns", "cancel"), ("packruns", "list"), ("packruns", "retry"), ("packruns", "show"),
        ("quotas", "list"), ("quotas", "pause"), ("quotas", "resume"),
        ("runs", "cancel"), ("runs", "list"), ("runs", "show"), ("runs", "watch"),
        ("whoami",),
    ]


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "ops")
def test_each_help_reads_well(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(ops, [*command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    usage, _, rest = result.output.partition("\n\n")
    assert usage.startswith("Usage: ops ")
    summary = rest.strip().splitlines()[0]
    assert len(summary) > 15 and summary[0].isupper(), summary
    assert "--output" in result.output and "--tenant" in result.output
    if command and command[-1] in {"replay", "discard", "restore", "pause", "resume", "cancel", "retry"}:
        assert "--reason TEXT" in result.output and "[required]" in result.output and "--ticket" in result.output
    assert all(len(line) <= 100 for line in result.output.splitlines()), result.output


# -- the token is never shown ------------------------------------------------------------------


async def test_the_token_never_appears_in_output_or_verbose_logs(operator: Operator, runtime):
    (entry,) = await dead_letters(runtime, operator.tenant, 1, error_code="E_SECRET")
    signature = operator.token.rsplit(".", 1)[1]
    for args in (
        ("whoami", "-v"),
        ("whoami", "-v", "-o", "json"),
        ("deadletter", "list", "-v"),
        ("deadletter", "list", "-v", "-o", "json"),
        ("deadletter", "show", "missing", "-v"),
        ("deadletter", "replay", entry.entry_id, "--reason", "r", "-v"),
        ("deadletter", "replay", "-f", "errorCode=E_SECRET", "--reason", "r", "-v"),
        ("quotas", "list", "--url", f"http://127.0.0.1:{free_port()}", "-v"),
    ):
        result = operator(*args)
        assert signature not in result.both and "Bearer" not in result.both, args
        if "-v" in args and args[0] != "whoami":
            assert "-> GET" in result.err or "-> POST" in result.err, (args, result.err)


# -- where to connect ---------------------------------------------------------------------------


async def test_a_profile_names_url_tenant_and_token_file(operator: Operator):
    token_file = operator.home / "staging.token"
    token_file.write_text(operator.token + "\n")
    config = operator.home / ".config" / "jobgate"
    config.mkdir(parents=True)
    (config / "ops.toml").write_text(
        f'[profiles.staging]\nurl = "{operator.url}"\ntenant = "{operator.tenant}"\ntoken_file = "{token_file}"\n'
    )
    result = operator(
        "--profile", "staging", "quotas", "list", JOBGATE_URL=None, JOBGATE_TENANT=None, JOBGATE_TOKEN=None
    )
    assert result.code == 0, result.both
    who = operator("whoami", "--profile", "staging", "-o", "json", JOBGATE_URL=None, JOBGATE_TOKEN=None).json()
    assert (who["url"], who["tenant"], who["profile"]) == (operator.url, operator.tenant, "staging")

    unknown = operator("--profile", "prod", "quotas", "list", JOBGATE_TOKEN=None)
    assert unknown.code == 2 and "no profile 'prod'" in unknown.err and "profiles: staging" in unknown.err


async def test_the_tenant_defaults_to_the_one_the_token_grants(operator: Operator):
    assert operator("quotas", "list", JOBGATE_TENANT=None).code == 0


async def test_token_file_flag_reads_the_token_from_a_file(operator: Operator):
    token_file = operator.home / "token"
    token_file.write_text(operator.token)
    assert operator("quotas", "list", "--token-file", str(token_file), JOBGATE_TOKEN=None).code == 0
    missing = operator("quotas", "list", "--token-file", str(operator.home / "absent"), JOBGATE_TOKEN=None)
    assert missing.code == 2 and "cannot read the token file" in missing.err


# -- problems and exit codes ---------------------------------------------------------------------


async def test_exit_0_when_done(operator: Operator):
    assert operator("deadletter", "stats").code == 0


async def test_exit_1_when_refused_with_the_problem_in_one_block(operator: Operator):
    result = operator("deadletter", "show", "dle-missing")
    assert result.code == 1
    assert re.search(r"refused: 404 not_found \(Not Found\)\n  Dead-letter entry not found.\n  traceId: \w+", result.err)


async def test_field_errors_are_listed_in_the_block(operator: Operator):
    result = operator("deadletter", "list", "--filter", "deadLetteredFrom=yesterday")
    assert result.code == 1
    block = result.err
    assert block.startswith("refused: 400 ") and "traceId:" in block
    assert re.search(r"\n  - \S*deadLetteredFrom\S*: ", block), block


async def test_exit_1_when_the_token_lacks_the_scope(operator: Operator, keys):
    reader = keys.token(tenant=operator.tenant, scope="orch:read", sub="ops.reader")
    result = operator("deadletter", "stats", JOBGATE_TOKEN=reader)
    assert result.code == 1 and "refused: 403" in result.err


async def test_exit_2_on_usage_errors(operator: Operator):
    assert operator("deadletter", "list", "--filter", "nope").code == 2
    assert operator("deadletter", "list", "--filter", "errorcode=E").code == 2
    assert operator("deadletter", "replay", "--reason", "what").code == 2
    assert operator("deadletter", "replay", "dle-1", "-f", "errorCode=E", "--reason", "both").code == 2
    assert operator("deadletter", "list", "--output", "yaml").code == 2
    no_token = operator("deadletter", "list", JOBGATE_TOKEN=None)
    assert no_token.code == 2 and "no token: set JOBGATE_TOKEN, pass --token-file FILE" in no_token.err


async def test_exit_3_when_the_gateway_is_unreachable(operator: Operator):
    result = operator("quotas", "list", "--url", f"http://127.0.0.1:{free_port()}", timeout=120)
    assert result.code == 3
    assert "did not answer (ConnectError) after 5 attempts" in result.err


async def test_exit_3_when_the_gateway_keeps_answering_5xx(operator: Operator, runtime):
    rows = await Rows.of(runtime, operator.tenant)
    quota = rows.quota("export")
    await rows.add(quota)
    plan = Plan(unavailable=100)
    with proxy(operator.url, plan) as url:
        result = operator("quotas", "pause", quota.quota_id, "--reason", "r", JOBGATE_URL=url)
    assert result.code == 3
    assert "the gateway answered 503 after 5 attempt(s)" in result.err
    assert "gateway error: 503 unavailable" in result.err
    assert len(plan.seen) == 5 and len({h["Idempotency-Key"] for _, _, h in plan.seen}) == 1
    assert operator.api("GET", f"/jobengine/quotas/{quota.quota_id}").json()["paused"] is False
