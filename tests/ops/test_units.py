"""The pure parts of `jobgate ops`: where it connects, the token's claims, filters, run counts,
rate and time left, table widths."""

from __future__ import annotations

import base64
import json

import pytest

from app.ops.commands import parse_filters
from app.ops.follow import Counts, Rate, counts_of
from app.ops.render import Column, least_widths
from app.ops.target import UsageProblem, config_file, resolve, token_claims


def jwt_with(**claims: object) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFUzI1NiJ9.{body}.c2lnbmF0dXJl"


def test_flags_win_over_the_environment_and_the_environment_over_the_profile(tmp_path) -> None:
    (tmp_path / "jobgate").mkdir()
    (tmp_path / "jobgate" / "ops.toml").write_text(
        '[profiles.prod]\nurl = "https://prod.example"\ntenant = "globex"\ntoken_file = "%s"\n' % (tmp_path / "t")
    )
    (tmp_path / "t").write_text(jwt_with(sub="from-file") + "\n")
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "JOBGATE_TOKEN": jwt_with(sub="from-env")}
    target = resolve(url=None, tenant=None, project=None, token_file=None, profile="prod", environ=environ)
    assert (target.url, target.tenant, target.claims()["sub"]) == ("https://prod.example", "globex", "from-env")
    target = resolve(url="http://flag/", tenant="acme", project="p", token_file=str(tmp_path / "t"),
                     profile="prod", environ=environ)
    assert (target.url, target.tenant, target.project, target.claims()["sub"]) == ("http://flag", "acme", "p", "from-file")


def test_the_token_is_kept_out_of_the_targets_repr() -> None:
    token = jwt_with(sub="x", tenant="acme")
    target = resolve(url=None, tenant=None, project=None, token_file=None, profile=None, environ={"JOBGATE_TOKEN": token})
    assert token not in repr(target) and target.tenant == "acme" and target.url == "http://127.0.0.1:8080"


def test_the_config_file_honours_xdg_config_home() -> None:
    assert str(config_file({"XDG_CONFIG_HOME": "/x"})) == "/x/jobgate/ops.toml"
    assert str(config_file({"HOME": "/home/op"})) == "/home/op/.config/jobgate/ops.toml"


def test_a_profile_with_an_unknown_key_is_refused(tmp_path) -> None:
    (tmp_path / "jobgate").mkdir()
    (tmp_path / "jobgate" / "ops.toml").write_text('[profiles.prod]\nurl = "u"\ntoken = "inline"\n')
    with pytest.raises(UsageProblem, match="unknown keys token"):
        resolve(url=None, tenant=None, project=None, token_file=None, profile="prod",
                environ={"XDG_CONFIG_HOME": str(tmp_path), "JOBGATE_TOKEN": jwt_with()})


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b", "a.!!!.c", "a.WzFd.c"])
def test_a_token_that_is_not_a_jwt_is_a_usage_problem(token: str) -> None:
    with pytest.raises(UsageProblem):
        token_claims(token)


def test_filters_use_the_api_names_once_each() -> None:
    assert parse_filters(("errorCode=E=1", "jobType=scan"), "deadletter-action") == {"errorCode": "E=1", "jobType": "scan"}
    for bad in (("errorCode",), ("errorCode=",), ("=x",), ("status=pending",), ("jobType=a", "jobType=b")):
        with pytest.raises(UsageProblem):
            parse_filters(bad, "deadletter-action")


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"matched": 10, "replayed": 4, "skipped": 1, "failed": 2}, Counts(10, 5, 2)),
        ({"total": 3, "succeeded": 1, "failed": 1}, Counts(3, 1, 1)),
        ({"matched": 5, "discarded": 5}, Counts(5, 5, 0)),
        ({"total": 4, "replayed": 2, "not_found": 2, "skipped": 0}, Counts(4, 2, 2)),
        ({"checked": 7}, Counts(None, 0, 0)),
    ],
)
def test_run_counts_read_from_summary_counts(counts: dict[str, int], expected: Counts) -> None:
    assert counts_of({"summary_counts": counts}) == expected


def test_rate_and_time_left_from_what_was_observed() -> None:
    now = [100.0]
    rate = Rate(clock=lambda: now[0])
    assert rate.observe(Counts(100, 10, 0)) == (None, None)
    now[0] = 110.0
    assert rate.observe(Counts(100, 28, 2)) == (2.0, 35.0)
    assert rate.observe(Counts(None, 28, 2))[1] is None


def test_whole_columns_keep_their_width_and_texts_give_way_first() -> None:
    columns = [Column("id", "id", no_wrap=True), Column("code", "code"), Column("message", "m", max_width=40)]
    cells = [["0" * 36, "upstream.timeout", "x" * 60]]
    assert least_widths(cells, columns, 120) == [36, 16, 12]
    assert least_widths(cells, columns, 60) == [36, None, None]
    assert least_widths(cells, columns, 30) == [None, None, None]


@pytest.mark.parametrize(
    ("args", "url"),
    [
        ([], "http://env"),
        (["--url", "http://a"], "http://a"),
        (["whoami-after", "--url", "http://b"], "http://b"),
        (["--url", "http://a", "whoami-after", "--url", "http://b"], "http://b"),
    ],
)
def test_a_typed_global_option_wins_over_its_variable_before_or_after_the_subcommand(args, url) -> None:
    from click.testing import CliRunner

    from app.ops.commands import ops

    before = [a for a in args[: args.index("whoami-after")]] if "whoami-after" in args else args
    after = args[args.index("whoami-after") + 1:] if "whoami-after" in args else []
    env = {"JOBGATE_URL": "http://env", "JOBGATE_TOKEN": jwt_with(tenant="acme"), "JOBGATE_TENANT": None}
    result = CliRunner().invoke(ops, [*before, "whoami", *after, "-o", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["url"] == url
