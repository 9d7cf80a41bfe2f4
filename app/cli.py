"""The ``jobgate`` command."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
import contextlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import click

from app.settings import Settings, SettingsError, load_settings

T = TypeVar("T")
ALL_SCOPES = "orch:read orch:quota orch:operate orch:backfill orch:submit"


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"jobgate: invalid setting: {exc}", err=True)
        sys.exit(2)


def _run(factory: Callable[[Settings], Awaitable[T]]) -> T:
    return asyncio.run(factory(_settings()))


async def _with_sessions(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from app.storage.db import create_engine, session_factory

    engine = create_engine(settings)
    try:
        return await work(session_factory(engine))
    finally:
        await engine.dispose()


def _parse_ttl(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise click.BadParameter("use a number with s, m, h or d, e.g. 1h")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def dev_key_files(settings: Settings) -> tuple[Path, Path]:
    """The development key's files in the data directory: the public JWKS the gateway verifies
    with, and the private key that signs (both written by ``app.security.keys`` on first use)."""
    return settings.dev_jwks_path, settings.data_dir / "dev-signing-key.json"


def mint_token(
    settings: Settings, *, tenants: list[str], scope: str, subject: str, ttl_seconds: int, jkt: str | None = None
) -> str:
    """A token signed with the development key (dev only)."""
    import jwt

    from app.security.keys import dev_signing_key

    jwk = dev_signing_key(settings.data_dir)
    key = jwt.PyJWK(jwk).key
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": subject,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "scope": scope,
        "tenant": tenants[0] if len(tenants) == 1 else tenants,
        "client_id": "jobgate-cli",
    }
    if jkt:
        claims["cnf"] = {"jkt": jkt}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": jwk["kid"]})


@click.group()
def main() -> None:
    """Stella JobEngine Gateway."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes.")
@click.option("--demo", is_flag=True, help="Seed the demo data first.")
def serve(host: str, port: int, workers: int, demo: bool) -> None:
    """Run the gateway."""
    settings = _settings()
    if workers > 1 and (settings.is_sqlite or not settings.redis_url):
        click.echo("jobgate: --workers > 1 needs PostgreSQL and Redis (JOBGATE_DATABASE_URL, JOBGATE_REDIS_URL)", err=True)
        sys.exit(2)
    from app.storage.db import create_engine
    from app.storage.migrate import upgrade

    async def prepare() -> None:
        engine = create_engine(settings)
        try:
            if settings.is_sqlite:
                await upgrade(engine)
        finally:
            await engine.dispose()
        if demo:  # only into an empty database: a restart keeps what was done since
            from app.seed import seed_demo_if_empty

            seeded = await _with_sessions(settings, seed_demo_if_empty)
            click.echo(
                "Seeded the demo data (tenants acme, globex, initech)."
                if seeded is not None
                else "The database already has tenants: keeping its data, demo not re-seeded "
                "(`jobgate seed --demo --reset` starts the demo tenants over)."
            )

    asyncio.run(prepare())
    if settings.uses_dev_keys:
        token = mint_token(settings, tenants=["acme"], scope=ALL_SCOPES, subject="dev-operator", ttl_seconds=3600)
        click.echo("Stella JobEngine Gateway (development keys; tokens from `jobgate token`). Try:")
        click.echo(
            f"  curl -s http://{host}:{port}/jobengine/sources -H 'Authorization: Bearer {token}' "
            "-H 'X-Stella-Tenant: acme'"
        )
        if not demo:
            click.echo("  (tenant acme exists after `jobgate seed --demo` or `jobgate serve --demo`)")
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces

    from app.logs import granian_log_config

    with metrics_directory(workers):
        # SIGTERM: granian closes the listening socket, then each worker finishes its in-flight
        # requests; a worker still busy after the grace is killed.
        server = Granian(
            "app.server:create_served_app",
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            # HTTP/1.1 only (cleartext HTTP/2 needs prior knowledge, which browsers never use): the
            # automatic detection holds a larger buffer per connection, and an idle event stream is
            # one connection held for as long as its token lives (docs/benchmarks.md, the change feed).
            http=HTTPModes.http1,
            workers=workers,
            factory=True,
            log_access=False,  # the gateway writes its own access log (app/http/observability.py)
            log_dictconfig=granian_log_config(settings.log_format),
            workers_kill_timeout=max(1, math.ceil(settings.shutdown_grace_seconds)),
        )
        server.on_startup(announce_drain_to_workers)
        server.serve()


def announce_drain_to_workers() -> None:
    """On SIGTERM or SIGINT, tell every server process to end its event streams (SIGUSR1, see
    ``app.server.create_served_app``) before the server drains them: a stream never finishes by
    itself, so without it each would hold the drain until the kill timeout and end without the
    final ``retry:`` hint. Runs once the server has installed its own handlers, which it then calls."""
    import multiprocessing
    import signal

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def forward(number: int, frame: Any, previous: Any = previous) -> None:
            for child in multiprocessing.active_children():
                if child.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGUSR1)
            if callable(previous):
                previous(number, frame)

        signal.signal(signum, forward)


@contextmanager
def metrics_directory(workers: int) -> Iterator[None]:
    """Several server processes write their metrics to ``PROMETHEUS_MULTIPROC_DIR``, which must
    be set before any of them starts: a fresh directory (removed at exit) when it is unset, else
    the given one, emptied first (samples of an earlier run would be added to this one's)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if workers <= 1 and not given:
        yield
        return
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        yield
        return
    created = tempfile.mkdtemp(prefix="jobgate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(created, ignore_errors=True)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations up to head."""
    from app.storage.db import create_engine
    from app.storage.migrate import upgrade

    async def work(settings: Settings) -> None:
        engine = create_engine(settings)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    _run(work)
    click.echo("database at head")


@db.command("check-aggregates")
@click.option("--tenant", "tenant_key", default=None, help="Only this tenant (its key).")
@click.option("--repair", is_flag=True, help="Rewrite the drifted aggregates from their rows (one transaction).")
def db_check_aggregates(tenant_key: str | None, repair: bool) -> None:
    """Compare every maintained aggregate with a GROUP BY over its rows.

    Read-only unless --repair: prints each drift and exits 1 when there is one. With --repair the
    drifted tenants' aggregates are rewritten from their rows in one transaction, with an audit
    row per tenant repaired (the drifts found are printed, and the exit status is 0)."""
    from sqlalchemy import text

    from app.storage import aggregates
    from app.storage.db import create_engine

    async def work(settings: Settings) -> list[aggregates.Drift] | None:
        engine = create_engine(settings)
        try:
            tenant_id = None
            if tenant_key is not None:
                async with engine.connect() as conn:
                    found = (await conn.execute(text("SELECT id FROM tenants WHERE key = :key"), {"key": tenant_key}))
                    tenant_id = found.scalar_one_or_none()
                if tenant_id is None:
                    return None
            if repair:
                return await aggregates.repair(engine, tenant_id, subject=f"jobgate db check-aggregates ({_operator()})")
            return await aggregates.check(engine, tenant_id)
        finally:
            await engine.dispose()

    drifts = _run(work)
    if drifts is None:
        click.echo(f"jobgate: no tenant {tenant_key!r}", err=True)
        sys.exit(2)
    for drift in drifts:
        click.echo(("repaired: " if repair else "drift: ") + drift.describe())
    tenants = len({d.tenant_id for d in drifts})
    if not drifts:
        click.echo("aggregates exact")
    elif repair:
        click.echo(f"{len(drifts)} drift(s) repaired in {tenants} tenant(s); an audit row each")
    else:
        click.echo(f"{len(drifts)} drift(s) in {tenants} tenant(s); `--repair` rewrites them", err=True)
        sys.exit(1)


def _operator() -> str:
    """Who ran a command, for its audit rows: the login name where there is one."""
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER", "unknown")


@main.command()
@click.option("--demo", is_flag=True, help="Demo tenants and their data (the only seed there is).")
@click.option(
    "--reset", is_flag=True, help="Replace the demo tenants' data even when the database has tenants already."
)
def seed(demo: bool, reset: bool) -> None:
    """Deterministic demo data (repeatable: the same ids every time).

    Seeds only a database without tenants, unless --reset: then the demo tenants' sources,
    quotas, jobs, dead-letter entries, pack runs and operation runs are replaced by the demo's
    (other tenants and the audit log are left alone)."""
    if not demo:
        click.echo("jobgate: nothing to seed; pass --demo", err=True)
        sys.exit(2)
    from app.seed import seed_demo, seed_demo_if_empty
    from app.storage.db import create_engine
    from app.storage.migrate import upgrade

    async def work(settings: Settings) -> dict[str, int] | None:
        if settings.is_sqlite:  # the embedded default migrates itself, as on serve
            engine = create_engine(settings)
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()
        return await _with_sessions(settings, seed_demo if reset else seed_demo_if_empty)

    summary = _run(work)
    if summary is None:
        click.echo(
            "jobgate: the database already has tenants; nothing seeded "
            "(`jobgate seed --demo --reset` replaces the demo tenants' data)",
            err=True,
        )
        return
    click.echo(json.dumps(summary, sort_keys=True))


@main.group()
def tenants() -> None:
    """The tenant registry."""


@tenants.command("add")
@click.argument("key")
@click.option("--workspace", required=True)
@click.option("--create-workspace", is_flag=True, help="Create the workspace when it does not exist yet.")
def tenants_add(key: str, workspace: str, create_workspace: bool) -> None:
    from sqlalchemy import select

    from app.storage.models import Workspace
    from app.storage.tenants import add_tenant

    async def work(sessions: Any) -> str:
        async with sessions.begin() as session:
            exists = (await session.execute(select(Workspace.id).where(Workspace.key == workspace))).first()
            if exists is None and not create_workspace:
                raise ValueError(f"workspace {workspace!r} does not exist; pass --create-workspace to create it")
            tenant = await add_tenant(session, key, workspace)
            return f"{tenant.key} (id {tenant.id}, external id {tenant.external_id}) in workspace {workspace}"

    try:
        click.echo(_run(lambda s: _with_sessions(s, work)))
    except ValueError as exc:
        click.echo(f"jobgate: {exc}", err=True)
        sys.exit(2)


@tenants.command("list")
def tenants_list() -> None:
    from app.storage.tenants import list_tenants

    async def work(sessions: Any) -> list[Any]:
        async with sessions() as session:
            return await list_tenants(session)

    for t in _run(lambda s: _with_sessions(s, work)):
        click.echo(f"{t.key}\t{t.workspace_key}\t{t.id}\t{t.external_id}")


@main.command()
@click.option("--tenant", "tenant", required=True, multiple=True, help="Tenant key (repeat for several).")
@click.option("--scope", default=ALL_SCOPES, show_default=True)
@click.option("--sub", "subject", default="dev-operator", show_default=True)
@click.option("--ttl", default="1h", show_default=True)
@click.option("--jkt", default=None, help="Bind the token to a DPoP key thumbprint (cnf.jkt).")
def token(tenant: tuple[str, ...], scope: str, subject: str, ttl: str, jkt: str | None) -> None:
    """Mint a token with the development key (dev only).

    The key is the one `jobgate serve` created in its data directory (JOBGATE_DATA_DIR, else
    ./.jobgate); without it nothing is created: a new key would sign tokens the gateway refuses."""
    # Tokens need no cursor secret: a placeholder keeps the settings from writing the dev one.
    environ = dict(os.environ)
    environ["JOBGATE_CURSOR_SECRET"] = environ.get("JOBGATE_CURSOR_SECRET") or "token:" + "0" * 32
    try:
        settings = load_settings(environ)
    except SettingsError as exc:
        click.echo(f"jobgate: invalid setting: {exc}", err=True)
        sys.exit(2)
    if settings.env != "dev" or not settings.uses_dev_keys:
        click.echo("jobgate: tokens are minted only in dev with the development key", err=True)
        sys.exit(2)
    missing = [path for path in dev_key_files(settings) if not path.is_file()]
    if missing:
        where = settings.data_dir.resolve()
        click.echo(
            f"jobgate: no development key in {where} (missing {', '.join(p.name for p in missing)}).\n"
            "The key is created by `jobgate serve` in its data directory: JOBGATE_DATA_DIR, else .jobgate in the\n"
            "directory it was started from (./scripts/serve: the checkout). Run this command from that directory,\n"
            "or point it there, e.g. JOBGATE_DATA_DIR=/path/to/checkout/.jobgate jobgate token --tenant acme",
            err=True,
        )
        sys.exit(1)
    click.echo(mint_token(settings, tenants=list(tenant), scope=scope, subject=subject, ttl_seconds=_parse_ttl(ttl), jkt=jkt))


@main.command()
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(1, 1000), help="Jobs run at once.")
@click.option("--worker-id", default=None, help="Lease owner name (default: host-pid).")
@click.option("--tenant", "tenants", multiple=True, help="Only claim this tenant's jobs (repeat for several).")
@click.option("--metrics-port", default=None, type=click.IntRange(1, 65535), help="Serve /metrics on this port.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
def worker(
    concurrency: int, worker_id: str | None, tenants: tuple[str, ...], metrics_port: int | None, metrics_host: str
) -> None:
    """Run a job worker (JOBGATE_WORKER_* settings); SIGTERM stops it gracefully."""
    import signal

    from app import metrics
    from app.engine.config import load_worker_config
    from app.engine.handlers import load_handlers
    from app.engine.worker import Worker
    from app.logs import configure_logging
    from app.runtime import Runtime
    from app.storage.migrate import upgrade

    settings = _settings()
    try:
        config = load_worker_config()
    except SettingsError as exc:
        click.echo(f"jobgate: invalid setting: {exc}", err=True)
        sys.exit(2)
    configure_logging(settings.log_format, settings.log_level)
    if metrics_port is not None:
        metrics.serve_process_metrics(metrics_host, metrics_port)

    async def work() -> None:
        runtime = Runtime.create(settings, list_reads=False)
        if settings.is_sqlite:
            await upgrade(runtime.engine)
        unwatch_pool = metrics.watch_pool(runtime.engine)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        handlers = load_handlers(config.handler_modules)
        try:
            await Worker(runtime, config, handlers, worker_id=worker_id, concurrency=concurrency, tenants=tenants).run(stop)
        finally:
            await runtime.stop()
            unwatch_pool()
            metrics.process_exiting()

    asyncio.run(work())


@main.command()
def reconcile() -> None:
    """One reconciler pass: fail long-stale operation runs, end overdue cancels (prints a summary)."""
    from app.engine.reconciler import reconcile_once
    from app.runtime import Runtime

    async def work(settings: Settings) -> dict[str, Any]:
        runtime = Runtime.create(settings, list_reads=False)
        try:
            await runtime.start()
            return await reconcile_once(runtime)
        finally:
            await runtime.stop()

    click.echo(json.dumps(_run(work), sort_keys=True))


def openapi_document() -> dict[str, Any]:
    from app.server import create_app

    os.environ.setdefault("JOBGATE_DATA_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "jobgate-openapi"))
    from litestar.serialization import encode_json

    app = create_app(_settings())
    return json.loads(encode_json(app.openapi_schema.to_schema()))


def render_openapi(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document, sort_keys=True, allow_unicode=True, width=100)


@main.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def openapi(output: Path | None) -> None:
    """Write the OpenAPI document (YAML)."""
    text = render_openapi(openapi_document())
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)


from app.ops.commands import ops  # the operator's client: HTTP only

main.add_command(ops)


if __name__ == "__main__":
    main()
