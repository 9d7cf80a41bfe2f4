"""Settings: every ``JOBGATE_*`` variable, read once and validated at start-up.

A bad value raises :class:`SettingsError` whose message is one line naming the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.thresholds import DEFAULT_THRESHOLDS, Thresholds, ThresholdsError
from app.thresholds import parse as parse_thresholds

ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DEV_ISSUER = "https://jobgate.dev.local"
DEV_AUDIENCE = "stella-jobengine"
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")
_RATE_SECONDS = {"second": 1, "minute": 60, "hour": 3600}


class SettingsError(ValueError):
    """A setting is invalid; the message names the variable."""


@dataclass(frozen=True)
class RateLimit:
    requests: int
    period_seconds: int

    def __str__(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour"}[self.period_seconds]
        return f"{self.requests}/{unit}"


@dataclass(frozen=True)
class Settings:
    env: str = "dev"
    data_dir: Path = Path(".jobgate")
    database_url: str = ""
    redis_url: str | None = None
    redis_prefix: str = "jobgate:"
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_refresh_seconds: int = 300
    jwks_max_stale_seconds: int = 86400
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE
    algorithms: tuple[str, ...] = ("ES256", "RS256", "EdDSA")
    dpop: str = "optional"
    public_url: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    cursor_secrets: tuple[tuple[str, bytes], ...] = ()
    cors_origins: tuple[str, ...] = ()
    rate_limit: RateLimit = RateLimit(600, 60)
    max_body_bytes: int = 1024 * 1024
    database_pool_size: int = 20
    embedded_worker: bool = False
    embedded_worker_concurrency: int = 16
    log_format: str = "json"
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 30.0
    lifecycle_thresholds: Thresholds = DEFAULT_THRESHOLDS
    streams_per_tenant: int = 100
    streams_per_process: int = 2000
    feed_retention_seconds: int = 900
    uses_dev_keys: bool = False
    uses_dev_cursor_secret: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def dev_jwks_path(self) -> Path:
        return self.data_dir / "dev-jwks.json"



def _parse_rate(value: str) -> RateLimit:
    match = _RATE.match(value)
    if not match or int(match.group(1)) < 1:
        raise SettingsError(f"JOBGATE_RATE_LIMIT must look like '600/minute' (got {value!r})")
    return RateLimit(int(match.group(1)), _RATE_SECONDS[match.group(2)])


def _bounded_int(get: Callable[..., str | None], name: str, default: int, low: int, high: int) -> int:
    raw = get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"JOBGATE_{name} must be an integer (got {raw!r})") from None
    if not low <= value <= high:
        raise SettingsError(f"JOBGATE_{name} must be between {low} and {high} (got {value})")
    return value


def _parse_algorithms(value: str) -> tuple[str, ...]:
    algs = tuple(a.strip() for a in value.split(",") if a.strip())
    if not algs:
        raise SettingsError("JOBGATE_AUTH_ALGORITHMS must name at least one algorithm")
    unknown = [a for a in algs if a not in ASYMMETRIC_ALGORITHMS | HMAC_ALGORITHMS]
    if unknown:
        raise SettingsError(f"JOBGATE_AUTH_ALGORITHMS has unsupported algorithm(s): {', '.join(unknown)}")
    if any(a in HMAC_ALGORITHMS for a in algs) and any(a in ASYMMETRIC_ALGORITHMS for a in algs):
        raise SettingsError("JOBGATE_AUTH_ALGORITHMS must not mix HMAC (HS*) with asymmetric algorithms")
    return algs


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
_ORIGIN = re.compile(rf"^https?://{_HOST}(?::\d{{1,5}})?$")
_HTTP_URL = re.compile(rf"^https?://{_HOST}(?::\d{{1,5}})?(?:/[^?#\s]*)?$")
_ALLOWED_HOST = re.compile(rf"^(?:\*\.)?{_HOST}$")
_HTTP_URL_WITH_QUERY = re.compile(rf"^https?://{_HOST}(?::\d{{1,5}})?(?:[/?][^#\s]*)?$")


def _parse_cursor_secrets(value: str) -> tuple[tuple[str, bytes], ...]:
    """``kid:secret,kid2:secret2`` (the first signs, all verify) or one bare secret."""
    secrets: list[tuple[str, bytes]] = []
    for index, part in enumerate(p.strip() for p in value.split(",") if p.strip()):
        kid, sep, secret = part.partition(":")
        if not sep:
            kid, secret = f"k{index}", part
        if len(secret) < 16 or not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", kid):
            raise SettingsError(
                "JOBGATE_CURSOR_SECRET must be 'kid:secret[,kid:secret]' with secrets of 16+ characters"
            )
        if kid in {k for k, _ in secrets}:
            raise SettingsError(f"JOBGATE_CURSOR_SECRET names the key id {kid!r} twice")
        secrets.append((kid, secret.encode()))
    if not secrets:
        raise SettingsError("JOBGATE_CURSOR_SECRET is empty")
    return tuple(secrets)


def _dev_cursor_secret(data_dir: Path) -> bytes:
    path = data_dir / "dev-cursor-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(os.urandom(32).hex())
        path.chmod(0o600)
    return path.read_text().strip().encode()


def _refuse_dev_values_in_prod(settings: Settings) -> None:
    if settings.uses_dev_keys:
        raise SettingsError(
            "JOBGATE_AUTH_JWKS_FILE or JOBGATE_AUTH_JWKS_URL is required when JOBGATE_ENV=prod"
        )
    if settings.uses_dev_cursor_secret:
        raise SettingsError("JOBGATE_CURSOR_SECRET is required when JOBGATE_ENV=prod")
    if settings.issuer == DEV_ISSUER:
        raise SettingsError("JOBGATE_AUTH_ISSUER must be set (not the dev issuer) when JOBGATE_ENV=prod")
    if settings.audience == DEV_AUDIENCE:
        raise SettingsError("JOBGATE_AUTH_AUDIENCE must be set (not the dev audience) when JOBGATE_ENV=prod")
    if settings.is_sqlite:
        raise SettingsError("JOBGATE_DATABASE_URL must name PostgreSQL when JOBGATE_ENV=prod")
    if not settings.public_url and not settings.allowed_hosts:
        # Otherwise the request's Host header would be trusted for DPoP htu and Location.
        raise SettingsError("JOBGATE_PUBLIC_URL or JOBGATE_ALLOWED_HOSTS is required when JOBGATE_ENV=prod")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings; raise :class:`SettingsError` on the first bad variable.

    Nothing is written until every variable is valid: only then is the development cursor
    secret created (dev mode without ``JOBGATE_CURSOR_SECRET``).
    """
    env = dict(os.environ if environ is None else environ)
    get = lambda name, default=None: env.get(f"JOBGATE_{name}") or default

    mode = get("ENV", "dev")
    if mode not in {"dev", "prod"}:
        raise SettingsError(f"JOBGATE_ENV must be 'dev' or 'prod' (got {mode!r})")
    data_dir = Path(get("DATA_DIR", ".jobgate"))

    database_url = get("DATABASE_URL")
    if database_url is None:
        database_url = f"sqlite+aiosqlite:///{(data_dir / 'jobgate.db').as_posix()}"
    elif not re.match(r"^(postgresql\+asyncpg|sqlite\+aiosqlite)://", database_url):
        raise SettingsError(
            "JOBGATE_DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite://"
        )

    redis_url = get("REDIS_URL")
    if redis_url is not None and not re.match(r"^(redis|rediss|unix)://", redis_url):
        raise SettingsError("JOBGATE_REDIS_URL must start with redis://, rediss:// or unix://")

    jwks_file = get("AUTH_JWKS_FILE")
    jwks_url = get("AUTH_JWKS_URL")
    if jwks_file and jwks_url:
        raise SettingsError("JOBGATE_AUTH_JWKS_FILE and JOBGATE_AUTH_JWKS_URL are exclusive; set one")
    if jwks_file and not Path(jwks_file).is_file():
        raise SettingsError(f"JOBGATE_AUTH_JWKS_FILE does not name a readable file: {jwks_file}")
    if jwks_url and not _HTTP_URL_WITH_QUERY.match(jwks_url):
        raise SettingsError("JOBGATE_AUTH_JWKS_URL must be an absolute http(s) URL")
    uses_dev_keys = not (jwks_file or jwks_url)

    jwks_refresh = _bounded_int(get, "AUTH_JWKS_REFRESH_SECONDS", 300, 30, 86400)
    # At least twice the shortest refresh interval: a process whose provider answers must not
    # go stale between two refreshes (the key set refreshes at least twice per window).
    jwks_max_stale = _bounded_int(get, "AUTH_JWKS_MAX_STALE_SECONDS", 86400, 60, 30 * 86400)

    dpop = get("AUTH_DPOP", "optional")
    if dpop not in {"off", "optional", "required"}:
        raise SettingsError(f"JOBGATE_AUTH_DPOP must be off, optional or required (got {dpop!r})")

    public_url = get("PUBLIC_URL")
    if public_url is not None:
        if not _HTTP_URL.match(public_url):
            raise SettingsError(
                "JOBGATE_PUBLIC_URL must be an absolute http(s) URL (host, optional port and path; "
                "no credentials, query or fragment)"
            )
        public_url = public_url.rstrip("/")

    allowed_hosts = tuple(h.strip().lower() for h in (get("ALLOWED_HOSTS", "") or "").split(",") if h.strip())
    for host in allowed_hosts:
        if not _ALLOWED_HOST.match(host):
            raise SettingsError(
                f"JOBGATE_ALLOWED_HOSTS has an invalid host name: {host!r} (names without port; '*.' for subdomains)"
            )

    cursor_raw = get("CURSOR_SECRET")
    cursor_secrets = () if cursor_raw is None else _parse_cursor_secrets(cursor_raw)

    cors = tuple(o.strip() for o in (get("CORS_ORIGINS", "") or "").split(",") if o.strip())
    for origin in cors:
        if origin == "*" and mode == "prod":
            raise SettingsError("JOBGATE_CORS_ORIGINS must list exact origins in prod, not '*'")
        if origin != "*" and not _ORIGIN.match(origin):
            raise SettingsError(f"JOBGATE_CORS_ORIGINS has an invalid origin: {origin!r}")

    try:
        max_body = int(get("MAX_BODY_BYTES", str(1024 * 1024)))
    except ValueError:
        raise SettingsError("JOBGATE_MAX_BODY_BYTES must be an integer") from None
    if max_body < 1024:
        raise SettingsError("JOBGATE_MAX_BODY_BYTES must be at least 1024")

    try:  # read by the lifecycle routes and the reconciler; a bad value stops start-up here
        thresholds = parse_thresholds(env.get("JOBGATE_LIFECYCLE_THRESHOLDS"))
    except ThresholdsError as exc:
        raise SettingsError(str(exc)) from None

    try:
        pool_size = int(get("DATABASE_POOL_SIZE", "20"))
    except ValueError:
        raise SettingsError("JOBGATE_DATABASE_POOL_SIZE must be an integer") from None
    if not 1 <= pool_size <= 500:
        raise SettingsError("JOBGATE_DATABASE_POOL_SIZE must be between 1 and 500")

    log_format = get("LOG_FORMAT", "json")
    if log_format not in {"json", "text"}:
        raise SettingsError(f"JOBGATE_LOG_FORMAT must be json or text (got {log_format!r})")
    log_level = get("LOG_LEVEL", "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"JOBGATE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {log_level!r})")
    try:
        shutdown_grace = float(get("SHUTDOWN_GRACE_SECONDS", "30"))
    except ValueError:
        raise SettingsError("JOBGATE_SHUTDOWN_GRACE_SECONDS must be a number") from None
    if not 1 <= shutdown_grace <= 3600:
        raise SettingsError("JOBGATE_SHUTDOWN_GRACE_SECONDS must be between 1 and 3600")

    embedded_worker = get("EMBEDDED_WORKER", "false").lower()
    if embedded_worker not in {"true", "false"}:
        raise SettingsError(f"JOBGATE_EMBEDDED_WORKER must be true or false (got {embedded_worker!r})")
    # Jobs the in-process worker runs at once: above the demo's quota-bound sleeps (3 per tenant).
    embedded_worker_concurrency = _bounded_int(get, "EMBEDDED_WORKER_CONCURRENCY", 16, 1, 64)

    # Event streams (GET /jobengine/events and the lifecycle streams) and the change feed's window
    streams_per_tenant = _bounded_int(get, "STREAMS_PER_TENANT", 100, 1, 100_000)
    streams_per_process = _bounded_int(get, "STREAMS_PER_PROCESS", 2000, 1, 100_000)
    feed_retention = _bounded_int(get, "FEED_RETENTION_SECONDS", 900, 600, 7 * 86400)

    prefix = get("REDIS_PREFIX", "jobgate:")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
        raise SettingsError("JOBGATE_REDIS_PREFIX must be 1-64 characters of [A-Za-z0-9_.:-]")

    settings = Settings(
        env=mode,
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=prefix,
        jwks_file=Path(jwks_file) if jwks_file else None,
        jwks_url=jwks_url,
        jwks_refresh_seconds=jwks_refresh,
        jwks_max_stale_seconds=jwks_max_stale,
        issuer=get("AUTH_ISSUER", DEV_ISSUER),
        audience=get("AUTH_AUDIENCE", DEV_AUDIENCE),
        algorithms=_parse_algorithms(get("AUTH_ALGORITHMS", "ES256,RS256,EdDSA")),
        dpop=dpop,
        public_url=public_url,
        allowed_hosts=allowed_hosts,
        cursor_secrets=cursor_secrets,
        cors_origins=cors,
        rate_limit=_parse_rate(get("RATE_LIMIT", "600/minute")),
        max_body_bytes=max_body,
        embedded_worker=embedded_worker == "true",
        embedded_worker_concurrency=embedded_worker_concurrency,
        database_pool_size=pool_size,
        log_format=log_format,
        log_level=log_level,
        shutdown_grace_seconds=shutdown_grace,
        lifecycle_thresholds=thresholds,
        streams_per_tenant=streams_per_tenant,
        streams_per_process=streams_per_process,
        feed_retention_seconds=feed_retention,
        uses_dev_keys=uses_dev_keys,
        uses_dev_cursor_secret=cursor_raw is None,
    )
    if mode == "prod":
        _refuse_dev_values_in_prod(settings)
    if settings.uses_dev_cursor_secret:
        settings = replace(settings, cursor_secrets=(("dev", _dev_cursor_secret(data_dir)),))
    return settings
