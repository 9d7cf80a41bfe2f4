"""Prometheus metrics. Labels are route templates and small enums, never raw paths or tenants.

Every process writes its own samples; with ``PROMETHEUS_MULTIPROC_DIR`` set (``jobgate serve
--workers N`` sets one up) they go to files there and :func:`render` adds up all processes. The
job gauges (queued and running jobs per job type) are not kept by any process: the scraped
process reads them from the database, at most every :data:`JOB_GAUGE_TTL_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("jobgate.metrics")

UNMATCHED = "unmatched"  # the route label of a path no route matched (a 404 from the router)
JOB_GAUGE_TTL_SECONDS = 5.0
MAX_JOB_TYPE_LABELS = 100  # beyond this, the smallest job types are summed as "other"

REQUESTS = Counter("jobgate_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "jobgate_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUTH_FAILURES = Counter("jobgate_auth_failures_total", "Refused credentials", ["reason"])
RATE_LIMITED = Counter("jobgate_rate_limited_total", "Requests refused by the rate limit")
RATE_LIMIT_FAIL_OPEN = Counter(
    "jobgate_rate_limit_fail_open_total", "Requests let through because the rate-limit store failed"
)
JWKS_REFRESHES = Counter(
    "jobgate_auth_jwks_refreshes_total",
    "Verification-key (JWKS) fetches, by outcome",
    ["outcome"],  # changed | unchanged | error (unreachable, HTTP error, unreadable file) | invalid (not a usable JWKS)
)
# Per key source (file or url), set only by the processes that keep a key set: a process that never
# does adds no sample, so the minimum over live processes is the one that matters.
JWKS_KEYS = Gauge(
    "jobgate_auth_jwks_keys",
    "Verification keys loaded, the fewest of any live process",
    ["source"],
    multiprocess_mode="livemin",
)
JWKS_FRESH = Gauge(
    "jobgate_auth_jwks_last_success_timestamp_seconds",
    "Unix time of the last successful JWKS fetch (0 before the first), the oldest of any live process",
    ["source"],
    multiprocess_mode="livemin",
)
AUDIT_FAILURES = Counter("jobgate_audit_failures_total", "Refusal audit rows that could not be written")
REVALIDATED_IN_MEMORY = Counter(
    "jobgate_revalidations_in_memory_total", "Revalidations answered 304 from the change feed's versions, no database"
)

DEAD_LETTERED = Counter(
    "jobgate_deadletter_entries_total",
    "Jobs dead-lettered (a new entry, or a replayed entry that failed again)",
    ["job_type", "category"],
)
REPLAY_ENTRIES = Counter(
    "jobgate_replay_entries_total",
    "Dead-letter entries handled by replay-by-filter runs",
    ["outcome"],  # replayed | failed | skipped
)
RECONCILER_ACTIONS = Counter(
    "jobgate_reconciler_actions_total",
    "What the reconciler did",
    ["action"],  # reconciled_run | canceled_pack_run | canceled_job
)
WORKER_JOBS = Counter(
    "jobgate_worker_jobs_total",
    "Job attempts ended by this worker, by outcome",
    ["job_type", "outcome"],  # succeeded | failed | cancel | shutdown | lost
)
POOL_CHECKED_OUT = Gauge(
    "jobgate_db_pool_checked_out",
    "Database connections in use (the sessions' pool and the list reads' pool), summed over live processes",
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "jobgate_db_pool_size",
    "Database connections the pools may hold, summed over live processes",
    multiprocess_mode="livesum",
)


# The counter and histogram of each (method, route, status) seen: finding a metric's child by its
# labels costs more than counting in it. Labels are bounded (route templates, methods, statuses).
_REQUEST_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    children = _REQUEST_CHILDREN.get((method, route, status))
    if children is None:
        children = REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)
        _REQUEST_CHILDREN[(method, route, status)] = children
    children[0].inc()
    children[1].observe(seconds)


def count_replays(replayed: int = 0, failed: int = 0, skipped: int = 0) -> None:
    for outcome, amount in (("replayed", replayed), ("failed", failed), ("skipped", skipped)):
        if amount > 0:
            REPLAY_ENTRIES.labels(outcome).inc(amount)


def count_reconciled(summary: dict[str, Any]) -> None:
    """The reconciler pass's summary (``reconcile_once``) as action counters."""
    for action, key in (
        ("reconciled_run", "reconciled_runs"),
        ("canceled_pack_run", "canceled_pack_runs"),
        ("canceled_job", "canceled_jobs"),
    ):
        if summary.get(key):
            RECONCILER_ACTIONS.labels(action).inc(summary[key])


def watch_pool(engine: AsyncEngine, *, also: int = 0) -> Callable[[], None]:
    """Keep the pool gauges of this process up to date (connection checkout and checkin events);
    ``also`` is the size of a pool beside the engine's (the list reads', which counts its own
    connections in use). Returns the function that stops watching."""
    sync_engine = engine.sync_engine
    size_of = getattr(sync_engine.pool, "size", None)
    size = (size_of() if callable(size_of) else 0) + also
    POOL_SIZE.inc(size)

    def checked_out(*_: Any) -> None:
        POOL_CHECKED_OUT.inc()

    def checked_in(*_: Any) -> None:
        POOL_CHECKED_OUT.dec()

    event.listen(sync_engine, "checkout", checked_out)
    event.listen(sync_engine, "checkin", checked_in)

    def unwatch() -> None:
        event.remove(sync_engine, "checkout", checked_out)
        event.remove(sync_engine, "checkin", checked_in)
        POOL_SIZE.dec(size)

    return unwatch


def process_exiting() -> None:
    """A cleanly stopping process takes its live gauges out of the multi-process sum."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())


def _process_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return DEFAULT_REGISTRY


def serve_process_metrics(host: str, port: int) -> None:
    """A /metrics endpoint of its own (a worker process; it has no HTTP server otherwise)."""
    start_http_server(port, addr=host, registry=_process_registry())


# --- job gauges, read from the database at scrape time ----------------------------------------


class JobGauges:
    """Queued (pending or scheduled) and running (leased or running) jobs per job type, all tenants.

    One grouped query over the two partial indexes of live jobs, cached for a few seconds so that
    frequent scrapes (or several scrapers) cannot load the database.
    """

    def __init__(self, ttl_seconds: float = JOB_GAUGE_TTL_SECONDS) -> None:
        self.ttl_seconds = ttl_seconds
        self.read_at = float("-inf")
        self.queued: dict[str, int] = {}
        self.running: dict[str, int] = {}

    async def refresh(self, read: Callable[[], Awaitable[Iterable[tuple[str, str, int]]]]) -> None:
        """``read`` answers (job type, status, count) of the live jobs; called at most once per TTL."""
        if time.monotonic() - self.read_at < self.ttl_seconds:
            return
        queued: dict[str, int] = {}
        running: dict[str, int] = {}
        for job_type, status, count in await read():
            target = queued if status in ("pending", "scheduled") else running
            target[job_type] = target.get(job_type, 0) + count
        self.queued, self.running = _bounded(queued), _bounded(running)
        self.read_at = time.monotonic()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, help_text, values in (
            ("jobgate_jobs_queued", "Jobs waiting to be claimed (pending or scheduled), per job type", self.queued),
            ("jobgate_jobs_running", "Jobs leased, running or cancel_requested, per job type", self.running),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["job_type"])
            for job_type, count in sorted(values.items()):
                family.add_metric([job_type], count)
            yield family


_OPEN_LABEL_VALUES: dict[str, set[str]] = {}


def open_label(kind: str, value: str) -> str:
    """A counter's label value from an open set (job types, error categories, which submitters and
    handlers choose): the first :data:`MAX_JOB_TYPE_LABELS` distinct values a process sees keep
    their name, later ones count as ``other``, so no client can grow the number of series."""
    seen = _OPEN_LABEL_VALUES.setdefault(kind, set())
    if value in seen:
        return value
    if len(seen) < MAX_JOB_TYPE_LABELS:
        seen.add(value)
        return value
    return "other"


def _bounded(counts: dict[str, int]) -> dict[str, int]:
    if len(counts) <= MAX_JOB_TYPE_LABELS:
        return counts
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[: MAX_JOB_TYPE_LABELS - 1])
    kept["other"] = sum(count for _, count in ranked[MAX_JOB_TYPE_LABELS - 1 :])
    return kept


JOB_GAUGES = JobGauges()


class KeyAge:
    """``jobgate_auth_jwks_age_seconds``, worked out at scrape time from the fetch timestamps the
    processes write: a value stored by each process would stop ageing with the process's refresh
    loop, and a process whose refreshes stopped is the one to see."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "jobgate_auth_jwks_age_seconds",
            "Seconds since the last successful JWKS fetch, of the stalest live process",
            labels=["source"],
        )
        now = time.time()
        for metric in self.registry.collect():
            if metric.name == "jobgate_auth_jwks_last_success_timestamp_seconds":
                for sample in metric.samples:
                    family.add_metric([sample.labels["source"]], max(0.0, now - sample.value))
        yield family


async def render(live_jobs: Callable[[], Awaitable[Iterable[tuple[str, str, int]]]] | None = None) -> bytes:
    """The exposition text: every process's samples (all of them under PROMETHEUS_MULTIPROC_DIR),
    the age of the verification keys and, given a reader of the live jobs' counts, the job gauges."""
    registry = _process_registry()
    text = generate_latest(registry)
    ages = CollectorRegistry(auto_describe=False)
    ages.register(KeyAge(registry))  # type: ignore[arg-type]
    text += generate_latest(ages)
    if live_jobs is not None:
        try:
            await JOB_GAUGES.refresh(live_jobs)
        except Exception as exc:  # noqa: BLE001 - a scrape still answers; the gauges keep their last values
            log.warning("job gauges not refreshed (%s)", type(exc).__name__)
        jobs = CollectorRegistry(auto_describe=False)
        jobs.register(JOB_GAUGES)  # type: ignore[arg-type]
        text += generate_latest(jobs)
    return text
