"""The ``jobgate ops`` commands.

Only click is imported at module level: ``jobgate`` loads this module for every command, and
rich and httpx are loaded when an ``ops`` command runs.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from app.ops.client import Action, Gateway
    from app.ops.render import Output
    from app.ops.target import Target

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

OUTPUT_MODES = ("table", "json", "ndjson")
GLOBAL_OPTIONS = ("url", "tenant", "project", "token_file", "profile", "output", "verbose")

# Filter names of each list and by-filter action: the API's own query and body field names.
ENTRY_FILTERS = ("jobType", "category", "errorCode", "sourceId", "deadLetteredFrom", "deadLetteredTo")
FILTERS = {
    "deadletter": (*ENTRY_FILTERS, "status", "jobId"),
    "deadletter-action": ENTRY_FILTERS,
    "jobs": ("status", "jobType", "sourceId", "packRunId"),
    "quotas": ("jobType", "paused"),
    "packruns": ("status", "packName"),
    "runs": ("status", "outcome", "type", "tenant_id", "freshness_state", "reconciled"),
    "audit": ("action", "subject", "target", "occurredFrom", "occurredTo"),
}

WAITING_REASONS = {
    "scheduled": "its runAfter is still ahead",
    "quota_paused": "the quota of its jobType is paused (`jobgate ops quotas list`)",
    "quota_max_active": "its jobType's quota already has maxActive jobs running",
    "quota_rate": "its jobType's quota has spent its hourly budget",
    "pack_step_waiting": "an earlier step of its pack run has not finished",
    "source_disabled": "its source is disabled",
    "no_worker_for_job_type": "no live worker handles its jobType",
    "worker_capacity": "every worker that handles its jobType is busy",
}


def _global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The connection and output options, taken both before and after the subcommand."""
    options = [
        click.option("--url", envvar="JOBGATE_URL", help="Gateway base URL [env JOBGATE_URL; default http://127.0.0.1:8080]."),
        click.option("--tenant", envvar="JOBGATE_TENANT", help="Tenant key [env JOBGATE_TENANT; default: the token's only tenant]."),
        click.option("--project", help="Narrow every read and action to one project."),
        click.option(
            "--token-file",
            type=click.Path(dir_okay=False),
            help="File holding the bearer token (else env JOBGATE_TOKEN). The token is never printed.",
        ),
        click.option("--profile", envvar="JOBGATE_PROFILE", help="Named target from $XDG_CONFIG_HOME/jobgate/ops.toml."),
        click.option("--output", "-o", type=click.Choice(OUTPUT_MODES), help="table (default), json or ndjson."),
        click.option("--verbose", "-v", is_flag=True, default=None, help="Log each request and answer to stderr (never the token)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass
class Session:
    """One invocation: the merged global options, its output, its gateway (made on first use)."""

    options: dict[str, Any]
    _output: Output | None = None
    _gateway: Gateway | None = None
    _target: Target | None = None
    reason: str | None = None
    ticket: str | None = None
    _action: Action | None = field(default=None)

    @property
    def output(self) -> Output:
        if self._output is None:
            from app.ops.render import Output

            self._output = Output(self.options.get("output") or "table")
        return self._output

    @property
    def target(self) -> Target:
        if self._target is None:
            from app.ops.target import resolve

            self._target = resolve(
                url=self.options.get("url"),
                tenant=self.options.get("tenant"),
                project=self.options.get("project"),
                token_file=self.options.get("token_file"),
                profile=self.options.get("profile"),
            )
        return self._target

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            from app.ops.client import Gateway
            from app.ops.target import UsageProblem

            target = self.target
            if not target.tenant:
                raise UsageProblem(
                    "no tenant: pass --tenant KEY or set JOBGATE_TENANT (the token grants several or none)"
                )
            log = self.output.note if self.options.get("verbose") else None
            self._gateway = Gateway(target, log=log)
        return self._gateway

    @property
    def action(self) -> Action:
        """The operator action of this invocation: one Idempotency-Key for all its retries."""
        if self._action is None:
            from app.ops.client import Action

            assert self.reason is not None
            self._action = Action(self.reason, self.ticket)
        return self._action

    def close(self) -> None:
        if self._gateway is not None:
            self._gateway.close()


def _given(ctx: click.Context, values: dict[str, Any]) -> dict[str, tuple[int, Any]]:
    """The global options a context was given, ranked: typed on the command line 2, from the
    environment 1 (click reads the same variables at both levels)."""
    from click.core import ParameterSource

    ranked: dict[str, tuple[int, Any]] = {}
    for name in GLOBAL_OPTIONS:
        if values.get(name) is None:
            continue
        source = ctx.get_parameter_source(name)
        ranked[name] = (2 if source == ParameterSource.COMMANDLINE else 1, values[name])
    return ranked


def _session(params: dict[str, Any]) -> Session:
    """The session of a leaf command: a global option typed after the subcommand wins over one
    typed before it, and either over its environment variable."""
    ctx = click.get_current_context()
    before: dict[str, tuple[int, Any]] = ctx.meta.get("jobgate.ops", {})
    after = _given(ctx, params)
    merged = {
        name: max((v for v in (after.get(name), before.get(name)) if v), key=lambda v: v[0])[1]
        for name in GLOBAL_OPTIONS
        if name in before or name in after
    }
    for name in GLOBAL_OPTIONS:
        params.pop(name, None)
    session = Session(merged)
    session.reason = params.pop("reason", None)
    session.ticket = params.pop("ticket", None)
    return session


def _guarded(session: Session, work: Callable[[], int | None]) -> None:
    from app.ops.client import Refused, Unreachable
    from app.ops.render import problem_block
    from app.ops.target import UsageProblem

    code = EXIT_OK
    try:
        code = work() or EXIT_OK
    except UsageProblem as exc:
        session.output.note(f"jobgate ops: {exc}", style="red")
        code = EXIT_USAGE
    except Refused as exc:
        session.output.errors.print(problem_block(exc.status, exc.problem, heading="refused"))
        code = EXIT_REFUSED
    except Unreachable as exc:
        session.output.note(f"jobgate ops: {exc}", style="red")
        if exc.problem:
            session.output.errors.print(problem_block(exc.status, exc.problem, heading="gateway error"))
        code = EXIT_UNREACHABLE
    finally:
        session.close()
    sys.exit(code)


def ops_command(group: click.Group, name: str | None = None, **settings: Any) -> Callable[..., Any]:
    """A leaf command: global options, the session, errors mapped to the exit codes."""

    def decorate(function: Callable[..., int | None]) -> click.Command:
        @functools.wraps(function)
        def run(**params: Any) -> None:
            session = _session(params)
            _guarded(session, lambda: function(session, **params))

        # the command's own options first in its help, the global ones after them
        own = list(getattr(function, "__click_params__", []))
        run.__click_params__ = []  # type: ignore[attr-defined]
        _global_options(run)
        run.__click_params__ = run.__click_params__ + own  # type: ignore[attr-defined]
        return group.command(name, **settings)(run)

    return decorate


def action_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--ticket", help="Ticket id recorded with the action (X-Stella-Operator-Ticket).")(command)
    return click.option(
        "--reason", required=True, help="Why you act; recorded in the audit log (X-Stella-Operator-Reason)."
    )(command)


def filter_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--filter", "-f", "filters", multiple=True, metavar="KEY=VALUE",
        help="Filter with the API's field names (repeatable), e.g. --filter errorCode=E_TIMEOUT.",
    )(command)


def limit_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--limit", "-n", type=click.IntRange(min=0), default=50, show_default=True,
        help="Show at most this many items, fetching pages as needed (0: all).",
    )(command)


def parse_filters(pairs: tuple[str, ...], kind: str) -> dict[str, str]:
    from app.ops.target import UsageProblem

    allowed = FILTERS[kind]
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise UsageProblem(f"--filter {pair!r}: write KEY=VALUE, e.g. --filter errorCode=E_TIMEOUT")
        if key not in allowed:
            raise UsageProblem(f"--filter {key}: not a filter here (filters: {', '.join(allowed)})")
        if key in parsed:
            raise UsageProblem(f"--filter {key} given twice")
        parsed[key] = value
    return parsed


# -- the group -------------------------------------------------------------------------------


def _group_callback(**options: Any) -> None:
    ctx = click.get_current_context()
    ctx.meta["jobgate.ops"] = _given(ctx, options)


@click.group(
    "ops",
    short_help="The operator's command line over the HTTP API.",
    epilog=(
        "Connect with --url/JOBGATE_URL, --tenant/JOBGATE_TENANT and a token from JOBGATE_TOKEN or "
        "--token-file, or name a --profile of $XDG_CONFIG_HOME/jobgate/ops.toml. Exit codes: 0 done, "
        "1 refused by the gateway (4xx), not confirmed, or a followed run that did not succeed; "
        "2 usage; 3 gateway unreachable or failing (5xx) after retries."
    ),
)
@_global_options
def ops(**options: Any) -> None:
    """Operate a gateway over its HTTP API: read dead letters, jobs, quotas, pack runs, operation
    runs and the audit log; replay, discard, pause, cancel and retry with a reason; follow what
    an action started.

    \b
    Every action needs --reason (and takes --ticket); actions by filter show a dry-run preview
    and ask before acting (--yes in scripts).
    """
    _group_callback(**options)


def _subgroup(name: str, help_text: str) -> click.Group:
    group = click.Group(name, help=help_text)
    ops.add_command(group)
    return group


deadletter = _subgroup("deadletter", "Dead-letter entries: stats, list, show, replay, discard, restore.")
jobs = _subgroup("jobs", "Jobs: list, show, why one waits, cancel.")
quotas = _subgroup("quotas", "Quotas: list, pause, resume.")
packruns = _subgroup("packruns", "Pack runs: list, show, cancel, retry.")
runs = _subgroup("runs", "Operation runs: list, show, watch with a progress bar, cancel.")
audit = _subgroup("audit", "The audit log of every action, allowed or refused.")


# -- whoami ----------------------------------------------------------------------------------


@ops_command(ops, "whoami")
def whoami(session: Session) -> None:
    """Show the tenant, subject, scopes and expiry of your token.

    The token's claims are decoded here without verifying them (the gateway verifies on each
    request); the token itself is never printed."""
    from app.ops.target import granted_tenants

    target = session.target
    claims = target.claims()
    expires = claims.get("exp")
    expires_at = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z") if isinstance(expires, (int, float)) else None
    left = int(expires - datetime.now(UTC).timestamp()) if isinstance(expires, (int, float)) else None
    scope = claims.get("scope") or claims.get("scp") or ""
    payload = {
        "url": target.url,
        "profile": target.profile,
        "tenant": target.tenant,
        "project": target.project,
        "subject": claims.get("sub"),
        "tenants": granted_tenants(claims),
        "scopes": scope.split() if isinstance(scope, str) else list(scope),
        "expiresAt": expires_at,
        "expiresInSeconds": left,
        "expired": left is not None and left <= 0,
        "issuer": claims.get("iss"),
        "audience": claims.get("aud"),
        "clientId": claims.get("client_id"),
    }
    from app.ops.render import fields_table

    def render(doc: dict[str, Any]) -> Any:
        shown = dict(doc)
        if left is not None:
            shown["expiresAt"] = f"{expires_at} ({'expired' if left <= 0 else 'in ' + _duration(left)})"
        return fields_table(shown, skip=("expiresInSeconds", "expired"))

    session.output.document(payload, render)
    return EXIT_REFUSED if payload["expired"] else EXIT_OK


def _duration(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# -- reads -----------------------------------------------------------------------------------


def _list(session: Session, path: str, kind: str, filters: tuple[str, ...], limit: int, *,
          items_key: str = "items", extra: dict[str, str] | None = None, title: str | None = None) -> None:
    from app.ops import views

    params = {**parse_filters(filters, kind), **(extra or {})}
    listing = session.gateway.pages(path, params, items_key=items_key, limit=limit or None)
    session.output.listing(
        listing,
        views.COLUMNS[kind],
        title=title,
        page_document=lambda items: {items_key: items, "continuationToken": listing.continuation},
    )


def _show(session: Session, path: str, render: Callable[[Any], Any] | None = None) -> None:
    session.output.document(session.gateway.get(path), render)


@ops_command(deadletter, "stats")
def deadletter_stats(session: Session) -> None:
    """Totals by status and category, and the largest error clusters."""
    from app.ops import views

    _show(session, "/jobengine/deadletter/stats", views.stats)


@ops_command(deadletter, "list")
@filter_option
@limit_option
def deadletter_list(session: Session, filters: tuple[str, ...], limit: int) -> None:
    """List entries, newest first.

    Filters: jobType, category, errorCode, sourceId, status, deadLetteredFrom, deadLetteredTo, jobId."""
    _list(session, "/jobengine/deadletter", "deadletter", filters, limit)


@ops_command(deadletter, "show")
@click.argument("entry_id", metavar="ID")
def deadletter_show(session: Session, entry_id: str) -> None:
    """Show one entry with its error and payload."""
    _show(session, f"/jobengine/deadletter/{_segment(entry_id)}")


@ops_command(jobs, "list")
@filter_option
@limit_option
def jobs_list(session: Session, filters: tuple[str, ...], limit: int) -> None:
    """List jobs, newest first.

    Filters: status, jobType, sourceId, packRunId."""
    _list(session, "/jobengine/jobs", "jobs", filters, limit)


@ops_command(jobs, "show")
@click.argument("job_id", metavar="ID")
def jobs_show(session: Session, job_id: str) -> None:
    """Show one job: its status, attempts, lease, last error and payload."""
    _show(session, f"/jobengine/jobs/{_segment(job_id)}")


@ops_command(jobs, "why")
@click.argument("job_id", metavar="ID")
def jobs_why(session: Session, job_id: str) -> int:
    """Say why a job is not running yet (its waitingReason)."""
    job = session.gateway.get(f"/jobengine/jobs/{_segment(job_id)}")
    output = session.output
    if output.mode != "table":
        output.document(job)
    status = job.get("status")
    if "waitingReason" not in job:
        output.say(
            f"job {job_id} is {status}. This gateway does not report why a job waits: its job payload "
            "has no waitingReason (a gateway of the second release adds it)."
        )
        return EXIT_OK
    reason = job.get("waitingReason")
    if reason is None:
        output.say(f"job {job_id} is {status}: it is not waiting.")
    else:
        explained = WAITING_REASONS.get(reason, "")
        when = f" (runAfter {job.get('runAfter')})" if reason == "scheduled" else ""
        output.say(f"job {job_id} is {status}, waiting: {reason}" + (f" — {explained}{when}" if explained else ""))
    return EXIT_OK


@ops_command(quotas, "list")
@filter_option
@limit_option
def quotas_list(session: Session, filters: tuple[str, ...], limit: int) -> None:
    """List quotas with their limits and who paused them.

    Filters: jobType, paused."""
    _list(session, "/jobengine/quotas", "quotas", filters, limit)


@ops_command(packruns, "list")
@filter_option
@limit_option
def packruns_list(session: Session, filters: tuple[str, ...], limit: int) -> None:
    """List pack runs with their step counts, newest first.

    Filters: status, packName."""
    _list(session, "/jobengine/pack-runs", "packruns", filters, limit)


@ops_command(packruns, "show")
@click.argument("pack_run_id", metavar="ID")
def packruns_show(session: Session, pack_run_id: str) -> None:
    """Show one pack run (with its steps where the gateway reports them)."""
    from app.ops import views

    _show(session, f"/jobengine/pack-runs/{_segment(pack_run_id)}", views.pack_run)


@ops_command(runs, "list")
@filter_option
@limit_option
def runs_list(session: Session, filters: tuple[str, ...], limit: int) -> None:
    """List operation runs, newest first.

    Filters: status, outcome, type, tenant_id, freshness_state, reconciled."""
    _list(session, "/api/admin/operations", "runs", filters, limit, items_key="data")


@ops_command(runs, "show")
@click.argument("run_id", metavar="RUN", type=int)
def runs_show(session: Session, run_id: int) -> None:
    """Show one operation run and its counts."""
    _show(session, f"/api/admin/operations/{run_id}")


@ops_command(audit, "list")
@click.option("--action", "action_name", help="Only this action, e.g. deadletter.replay.")
@click.option("--target", "target_name", help="Only actions on this target id.")
@filter_option
@limit_option
def audit_list(
    session: Session, action_name: str | None, target_name: str | None, filters: tuple[str, ...], limit: int
) -> None:
    """List audit rows, newest first.

    Filters: action, subject, target, occurredFrom, occurredTo."""
    extra = {k: v for k, v in (("action", action_name), ("target", target_name)) if v}
    _list(session, "/jobengine/audit", "audit", filters, limit, extra=extra)


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


# -- actions ---------------------------------------------------------------------------------


def by_filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--yes", "-y", is_flag=True, help="Act without asking (scripts); the preview is still shown.")(command)
    return command


def follow_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--detach", is_flag=True, help="Do not follow the run the action starts (`runs watch RUN` follows it later)."
    )(command)


def _confirm(session: Session, question: str, yes: bool) -> bool:
    """True to act. Without --yes a terminal must answer; with neither the command stops (2)."""
    from app.ops.target import UsageProblem

    if yes:
        return True
    if not (sys.stdin.isatty() and sys.stderr.isatty()):  # the question is asked on stderr
        raise UsageProblem("refusing to act without a terminal to confirm on: pass --yes to act from a script")
    return click.confirm(question, default=False, err=True)


def _act_on_ids(session: Session, path: str, ids: tuple[str, ...], done: str) -> int:
    """A batch route, 200 ids a request (each its own Idempotency-Key, derived from the command's)."""
    from app.ops import views

    results: list[dict[str, Any]] = []
    unique = list(dict.fromkeys(ids))
    chunks = [unique[i: i + 200] for i in range(0, len(unique), 200)]
    payloads = []
    for n, chunk in enumerate(chunks):
        step = None if len(chunks) == 1 else str(n + 1)
        answer = session.gateway.act(path, session.action, {"entryIds": chunk}, step=step).json()
        payloads.append(answer)
        results += answer.get("results", [])
    output = session.output
    if output.mode == "table":
        output.listing(results, views.COLUMNS["outcomes"])
        counted = {o: sum(1 for r in results if r.get("outcome") == o) for o in dict.fromkeys(r.get("outcome") for r in results)}
        output.say(", ".join(f"{v} {k}" for k, v in counted.items()))
    else:
        for answer in payloads:
            output.document(answer)
    return EXIT_OK if all(r.get("outcome") == done for r in results) else EXIT_REFUSED


def _follow(session: Session, run_id: int | str, detach: bool, started: str | None = None) -> int:
    """Follow the run an action started (or `runs watch`); Ctrl-C detaches, the run goes on."""
    from app.ops.follow import Follower, finished, summary_line

    output = session.output
    try:
        if started:
            output.say(started)
        if detach:
            output.say(f"follow it with: jobgate ops runs watch {run_id}")
            return EXIT_OK
        run = Follower(session.gateway, output, run_id).follow()
    except KeyboardInterrupt:
        output.note(
            f"\nDetached: run {run_id} goes on. Follow it again with: jobgate ops runs watch {run_id}\n"
            f"Cancel it with: jobgate ops runs cancel {run_id} --reason \"...\""
        )
        return EXIT_OK
    if output.mode == "table":
        output.say(summary_line(run))
    else:
        output.document(run)
    return EXIT_OK if finished(run) and run.get("outcome") in ("succeeded", None) else EXIT_REFUSED


@ops_command(deadletter, "replay", short_help="Replay entries by id or by filter.")
@click.argument("entry_ids", metavar="[ID]...", nargs=-1)
@filter_option
@click.option("--max", "max_entries", type=click.IntRange(1, 100_000), help="Replay at most this many (default 10000).")
@click.option("--rate", "rate", type=click.IntRange(1, 100_000), help="At most this many a second (default 100).")
@by_filter_options
@follow_option
@action_options
def deadletter_replay(
    session: Session, entry_ids: tuple[str, ...], filters: tuple[str, ...], max_entries: int | None,
    rate: int | None, yes: bool, detach: bool,
) -> int:
    """Replay entries: by id, or every pending entry a filter matches.

    \b
    By id:     jobgate ops deadletter replay ID [ID...] --reason "fixed upstream"
    By filter: jobgate ops deadletter replay --filter errorCode=E_TIMEOUT --filter jobType=scan \\
                 --max 500 --rate 20 --reason "registry back" --ticket OPS-12

    A replay by filter first shows the dry run (how many match, a sample, how many would be
    replayed) and asks before acting (--yes in scripts); then it follows the replay run with a
    progress bar until it ends (Ctrl-C detaches: the run goes on). Ids are replayed at once;
    exit 1 when any of them was not replayed."""
    return _entry_action(session, "replay", entry_ids, filters, max_entries, rate, yes, detach)


@ops_command(deadletter, "discard", short_help="Discard entries by id or by filter.")
@click.argument("entry_ids", metavar="[ID]...", nargs=-1)
@filter_option
@click.option("--max", "max_entries", type=click.IntRange(1, 10_000), help="Discard at most this many (default 1000).")
@by_filter_options
@action_options
def deadletter_discard(
    session: Session, entry_ids: tuple[str, ...], filters: tuple[str, ...], max_entries: int | None, yes: bool
) -> int:
    """Discard entries (pending → discarded): by id, or every pending entry a filter matches.

    A discard by filter shows the dry run first and asks before acting (--yes in scripts).
    `deadletter restore ID` brings an entry back."""
    return _entry_action(session, "discard", entry_ids, filters, max_entries, None, yes, False)


def _entry_action(
    session: Session, verb: str, entry_ids: tuple[str, ...], filters: tuple[str, ...],
    max_entries: int | None, rate: int | None, yes: bool, detach: bool,
) -> int:
    from app.ops.target import UsageProblem

    if entry_ids and filters:
        raise UsageProblem(f"{verb} takes ids or --filter, not both")
    if not entry_ids and not filters:
        raise UsageProblem(f"{verb} what? give entry ids, or --filter KEY=VALUE (e.g. --filter errorCode=E_TIMEOUT)")
    if entry_ids:
        if max_entries is not None or rate is not None:
            raise UsageProblem("--max and --rate go with --filter")
        done = "replayed" if verb == "replay" else "discarded"
        return _act_on_ids(session, f"/jobengine/deadletter/{verb}/batch", entry_ids, done)
    return _by_filter(session, verb, parse_filters(filters, "deadletter-action"), max_entries, rate, yes, detach)


def _by_filter(
    session: Session, verb: str, criteria: dict[str, str], max_entries: int | None, rate: int | None,
    yes: bool, detach: bool,
) -> int:
    from app.ops import views

    path = f"/jobengine/deadletter/{verb}/pending"
    body: dict[str, Any] = {"filter": criteria}
    if max_entries is not None:
        body["maxEntries"] = max_entries
    if rate is not None:
        body["ratePerSecond"] = rate
    gateway, output = session.gateway, session.output
    preview = gateway.act(path, session.action, {**body, "dryRun": True}, step="preview").json()
    would = preview.get("wouldReplay", preview.get("wouldDiscard", 0))
    output.human(views.preview(verb, criteria, preview))
    if would == 0:
        output.say(f"nothing to {verb}.")
        return EXIT_OK
    if not _confirm(session, f"{verb.capitalize()} {would} entries?", yes):
        output.say(f"not confirmed: nothing was {verb}ed.")
        return EXIT_REFUSED
    answer = gateway.act(path, session.action, body).json()
    if verb == "discard":
        output.document(answer, views.discard_result)
        return EXIT_OK
    run_id = answer["operationRunId"]
    if output.mode != "table" and detach:
        output.document(answer)
        return EXIT_OK
    started = (
        f"the same filter is being replayed already: run {run_id}"
        if answer.get("deduplicated")
        else f"replay run {run_id} {answer.get('status', 'queued')}"
    )
    return _follow(session, run_id, detach, started)


@ops_command(deadletter, "restore")
@click.argument("entry_id", metavar="ID")
@action_options
def deadletter_restore(session: Session, entry_id: str) -> None:
    """Bring a discarded entry back to pending."""
    answer = session.gateway.act(f"/jobengine/deadletter/{_segment(entry_id)}/restore", session.action).json()
    session.output.document(answer)


@ops_command(jobs, "cancel")
@click.argument("job_id", metavar="ID")
@action_options
def jobs_cancel(session: Session, job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one at its next heartbeat."""
    response = session.gateway.act(f"/jobengine/jobs/{_segment(job_id)}/cancel", session.action)
    session.output.document(response.json())


@ops_command(quotas, "pause")
@click.argument("quota_id", metavar="ID")
@action_options
def quotas_pause(session: Session, quota_id: str) -> None:
    """Pause a quota: nothing of its jobType starts while paused."""
    session.output.document(session.gateway.act(f"/jobengine/quotas/{_segment(quota_id)}/pause", session.action).json())


@ops_command(quotas, "resume")
@click.argument("quota_id", metavar="ID")
@action_options
def quotas_resume(session: Session, quota_id: str) -> None:
    """Resume a paused quota."""
    session.output.document(session.gateway.act(f"/jobengine/quotas/{_segment(quota_id)}/resume", session.action).json())


@ops_command(packruns, "cancel")
@click.argument("pack_run_id", metavar="ID")
@action_options
def packruns_cancel(session: Session, pack_run_id: str) -> None:
    """Cancel a pack run."""
    from app.ops import views

    answer = session.gateway.act(f"/jobengine/pack-runs/{_segment(pack_run_id)}/cancel", session.action).json()
    session.output.document(answer, views.pack_run)


@ops_command(packruns, "retry", short_help="Retry a pack run and follow the new run.")
@click.argument("pack_run_id", metavar="ID")
@follow_option
@action_options
def packruns_retry(session: Session, pack_run_id: str, detach: bool) -> int:
    """Retry a finished pack run's failed steps as a new pack run, and follow it."""
    from app.ops import views

    answer = session.gateway.act(f"/jobengine/pack-runs/{_segment(pack_run_id)}/retry", session.action).json()
    session.output.document(answer, views.pack_run)
    run_id = answer.get("operationRunId")
    if run_id is None:
        return EXIT_OK
    return _follow(session, run_id, detach)


@ops_command(runs, "watch", short_help="Follow a run with a progress bar.")
@click.argument("run_id", metavar="RUN", type=int)
def runs_watch(session: Session, run_id: int) -> int:
    """Follow a run with a progress bar until it ends (Ctrl-C stops following, not the run)."""
    return _follow(session, run_id, False)


CANCEL_ROUTES = {"deadletter.replay_pending": "replay", "pack_run.execute": "packrun", "pack_run.retry": "packrun"}


@ops_command(runs, "cancel", short_help="Cancel a replay by filter or a pack run.")
@click.argument("run_id", metavar="RUN", type=int)
@action_options
def runs_cancel(session: Session, run_id: int) -> int:
    """Cancel a run with the route of its kind: a replay by filter stops before its next chunk;
    a pack run is canceled with its jobs."""
    from app.ops import views
    from app.ops.client import Refused

    gateway, output = session.gateway, session.output
    run = gateway.get(f"/api/admin/operations/{run_id}")
    kind = CANCEL_ROUTES.get(run.get("type", ""))
    if kind == "replay":
        answer = gateway.act(f"/jobengine/deadletter/replays/{run_id}/cancel", session.action).json()
        output.document(answer)
        return EXIT_OK
    if kind == "packrun":
        pack_run = next(
            (p for p in gateway.pages("/jobengine/pack-runs", {}) if p.get("operationRunId") == run_id), None
        )
        if pack_run is None:
            raise Refused(404, {"code": "pack_run_not_found", "detail": f"no pack run of this tenant has run {run_id}"})
        answer = gateway.act(f"/jobengine/pack-runs/{_segment(pack_run['packRunId'])}/cancel", session.action).json()
        output.document(answer, views.pack_run)
        return EXIT_OK
    raise Refused(
        409,
        {
            "code": "run_not_cancelable",
            "detail": f"run {run_id} is a {run.get('type')} run; only replays by filter and pack runs can be canceled",
        },
    )

