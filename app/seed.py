"""Deterministic demo data (spec §9): ``jobgate seed --demo [--reset]`` and ``jobgate serve --demo``.

When: ``serve --demo`` and ``seed --demo`` seed only a database without tenants
(:func:`seed_demo_if_empty`), so restarting the gateway keeps everything its users did;
``seed --demo --reset`` (:func:`seed_demo`) replaces the demo tenants' data on purpose.

What it creates: workspace ``eu-prod`` with tenants ``acme`` (projects ``billing`` and
``scanner``) and ``globex``, workspace ``us-prod`` with tenant ``initech``; for each tenant six
sources (two disabled), four quotas (``demo.fail`` paused, ``demo.sleep`` saturated), jobs in
every status, dead-letter entries in seven error clusters, nine pack runs (every status plus a
retry) each with its operation run, and operation runs in every lifecycle state (fresh, likely
stale, reconciled, terminal); plus one workspace-scoped ``ops.reconcile`` run per workspace.
Job types are the demo handlers' (``demo.noop``, ``demo.sleep``, ``demo.fail``, ``demo.flaky``)
so that an embedded worker can run, fail and replay them.

Repeatable:

- String ids are ``uuid5(DEMO_NAMESPACE, "<tenant>/<kind>/<name>")``: the same every time, on
  every database. Tenants' ``external_id`` is the same uuid5 with the version nibble set to 4
  (the lifecycle contract wants a UUID v4 string); an already registered tenant keeps its own.
- Operation runs' integer ids come from the database on the first seeding, inserted in a fixed
  order (so a fresh database gets 1, 2, 3, ...). A reseed gives every demo run the id it had
  before, matched by its scope and ``run_identity_hash`` (unique among demo runs), so links to
  demo runs survive reseeding and the id sequence never collides with runs the engine creates.
- Timestamps are offsets from ``now`` (the moment of seeding), so fresh runs are fresh and stale
  runs are stale right after seeding.
- Short: a ``demo.sleep`` job sleeps at most ``DEMO_SLEEP_SECONDS``, so the worker that runs the
  demo (the embedded one on the SQLite default) is never held for long. What looks long-running
  (a running pack run, a leased job) is a row in that state, leased by a worker that does not
  exist; when its lease lapses a real worker takes it over and finishes it within seconds.
- A reseed (``--reset``) replaces, in one transaction, the demo tenants' sources, quotas, jobs, dead-letter
  entries, pack runs and operation runs, and the demo workspace-scoped runs. It never touches
  audit rows (append-only) or other tenants.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Callable

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.domain.deadletter.templates import error_template, template_hash
from app.domain.operations.ledger import PACK_RUN_TO_OPERATION, identity_hash
from app.sanitize import sanitize
from app.storage.models import (
    DeadLetterEntry,
    Job,
    OperationRun,
    PackRun,
    Quota,
    Source,
    Tenant,
    Workspace,
)
from app.storage.tenants import add_tenant

DEMO_NAMESPACE = uuid.UUID("5d1e7c3a-2b9f-5c41-8e6d-0f4a9b2c7e13")

# --- pure rules -------------------------------------------------------------------------------


def demo_id(*parts: str) -> str:
    return str(uuid.uuid5(DEMO_NAMESPACE, "/".join(parts)))


def demo_external_id(tenant_key: str) -> str:
    """A stable UUID-v4-formatted external id for a demo tenant."""
    return str(uuid.UUID(bytes=uuid.uuid5(DEMO_NAMESPACE, f"tenant/{tenant_key}").bytes, version=4))


def _number(*parts: object, low: int, high: int) -> int:
    """A deterministic integer in [low, high] drawn from ``parts``."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return low + int.from_bytes(digest[:8], "big") % (high - low + 1)


def _hex(*parts: object, length: int = 16) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:length]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- what the demo holds ----------------------------------------------------------------------

WORKSPACES = {"eu-prod": "EU production", "us-prod": "US production"}


@dataclass(frozen=True)
class DemoTenant:
    key: str
    workspace: str
    display_name: str
    region: str
    uses_projects: bool = False


TENANTS = (
    DemoTenant("acme", "eu-prod", "Acme Corporation", "eu", uses_projects=True),
    DemoTenant("globex", "eu-prod", "Globex Industries", "eu"),
    DemoTenant("initech", "us-prod", "Initech", "us"),
)


@dataclass(frozen=True)
class SourceSpec:
    slug: str
    name: str
    source_type: str
    enabled: bool
    project: str  # used in tenants with projects (acme)
    description: str


SOURCES = (
    SourceSpec("registry-webhook", "Registry webhook", "webhook", True, "scanner", "Image pushes from the registry."),
    SourceSpec("nightly-scan", "Nightly image scan", "schedule", True, "scanner", "Re-scans every image at 02:00."),
    SourceSpec("billing-export", "Billing export queue", "queue", True, "billing", "Invoice exports to the ERP."),
    SourceSpec("operator-console", "Operator console", "manual", True, "billing", "Jobs started by operators."),
    SourceSpec("legacy-ftp", "Legacy FTP drop", "ftp", False, "billing", "Retired; kept for its history."),
    SourceSpec("partner-poller", "Partner API poller", "api", False, "scanner", "Paused until the partner's v3 API."),
)
ENABLED_SOURCES = tuple(s.slug for s in SOURCES if s.enabled)

QUOTAS = (
    # job type, max active, max per hour, burst; demo.sleep's max active is set to its active jobs
    ("demo.noop", 10, 600, 20),
    ("demo.sleep", 0, 120, 5),
    ("demo.fail", 4, 60, 5),
    ("demo.flaky", 4, 240, 10),
)
PAUSED_JOB_TYPE = "demo.fail"
SATURATED_JOB_TYPE = "demo.sleep"


@dataclass(frozen=True)
class Cluster:
    """Dead-letter entries whose messages differ only in ids and numbers."""

    slug: str
    category: str
    error_code: str
    job_type: str
    retryable: bool
    statuses: tuple[str, ...]  # one entry per status; "returned" = pending after a failed replay
    message: Callable[[DemoTenant, int, datetime], str]


def _timeout_message(t: DemoTenant, k: int, now: datetime) -> str:
    app = _number(t.key, "app", k, low=2, high=90)
    ms = _number(t.key, "ms", k, low=30_000, high=60_000)
    return f"request to https://registry.{t.key}.example.net/v2/library/app-{app}/manifests/latest timed out after {ms} ms"


def _refused_message(t: DemoTenant, k: int, now: datetime) -> str:
    octets = ".".join(str(_number(t.key, "ip", k, i, low=1, high=250)) for i in range(3))
    attempts = _number(t.key, "attempts", k, low=3, high=9)
    return f"connection to 10.{octets}:5432 refused after {attempts} attempts (pool {_hex(t.key, 'pool', k)})"


def _invalid_message(t: DemoTenant, k: int, now: datetime) -> str:
    line = _number(t.key, "line", k, low=0, high=40)
    units, cents = _number(t.key, "units", k, low=1, high=999), _number(t.key, "cents", k, low=0, high=99)
    return f"field 'invoice.lines[{line}].amount' must be a decimal, got '{units},{cents:02d}'"


def _missing_message(t: DemoTenant, k: int, now: datetime) -> str:
    bundle = _number(t.key, "bundle", k, low=100, high=999)
    return (
        f"artifact /var/lib/stella/artifacts/{demo_id(t.key, 'artifact', str(k))}/bundle-{bundle}.tgz "
        f"not found (job {demo_id(t.key, 'artifact-job', str(k))})"
    )


def _credentials_message(t: DemoTenant, k: int, now: datetime) -> str:
    robot = _number(t.key, "robot", k, low=1, high=40)
    at = now - timedelta(hours=_number(t.key, "rejected", k, low=2, high=30))
    return f"registry rejected credentials for robot account ci-bot-{robot} (HTTP 401) at {_iso(at)}"


def _throttled_message(t: DemoTenant, k: int, now: datetime) -> str:
    seconds = _number(t.key, "retry", k, low=5, high=120)
    return f"upstream answered 429 Too Many Requests; retry after {seconds} s (request id {_hex(t.key, 'req', k)})"


def _deadline_message(t: DemoTenant, k: int, now: datetime) -> str:
    deadline = _number(t.key, "deadline", k, low=300, high=1800)
    worker = _number(t.key, "worker", k, low=1, high=6)
    return f"job exceeded its deadline of {deadline} s on worker worker-{t.region}-{worker}"


CLUSTERS = (
    Cluster("timeout", "transient", "upstream.timeout", "demo.flaky", True,
            ("pending", "pending", "replayed", "pending", "pending"), _timeout_message),
    Cluster("refused", "dependency", "db.connection_refused", "demo.flaky", True,
            ("replaying", "pending", "pending"), _refused_message),
    Cluster("invalid", "validation", "payload.invalid", "demo.fail", False,
            ("returned", "discarded", "pending"), _invalid_message),
    Cluster("missing", "not_found", "artifact.missing", "demo.fail", True,
            ("pending", "pending"), _missing_message),
    Cluster("credentials", "auth", "credentials.rejected", "demo.fail", True,
            ("discarded", "pending"), _credentials_message),
    Cluster("throttled", "throttled", "rate.limited", "demo.flaky", True,
            ("replayed", "pending"), _throttled_message),
    Cluster("deadline", "timeout", "job.deadline_exceeded", "demo.sleep", True,
            ("pending", "pending"), _deadline_message),
)
# A failed pack-run step is a dead-lettered job: (pack run slug, step index) -> (cluster, entry).
FAILED_STEPS = {("sbom-refresh-failed", 1): ("timeout", 0), ("license-audit", 3): ("missing", 0)}


# What a demo.sleep job sleeps, at most: a worker that runs the demo's jobs (the embedded one on
# the SQLite default) is never held for long, so a job submitted to the demo starts promptly.
DEMO_SLEEP_SECONDS = 3
RECONCILE_THRESHOLD_SECONDS = 900
STEP_SECONDS = 90
OPERATOR = ("ops.alice", "Alice Moreau (operator)")
SCHEDULER = (None, "scheduler")
RECONCILER = (None, "scheduled_reconciler")


# --- building one tenant's rows -----------------------------------------------------------------


@dataclass
class _Rows:
    sources: list[Source] = field(default_factory=list)
    quotas: list[Quota] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    entries: list[DeadLetterEntry] = field(default_factory=list)
    pack_runs: list[PackRun] = field(default_factory=list)
    runs: list[OperationRun] = field(default_factory=list)
    run_of_pack: dict[str, OperationRun] = field(default_factory=dict)


class _TenantDemo:
    def __init__(self, tenant: DemoTenant, tenant_id: int, workspace_id: int, now: datetime) -> None:
        self.t = tenant
        self.tenant_id = tenant_id
        self.workspace_id = workspace_id
        self.now = now
        self.rows = _Rows()
        self.projects = {s.slug: (s.project if tenant.uses_projects else None) for s in SOURCES}
        self._next_source = 0

    def ago(self, **delta: float) -> datetime:
        return self.now - timedelta(**delta)

    def ahead(self, **delta: float) -> datetime:
        return self.now + timedelta(**delta)

    def id(self, kind: str, name: str) -> str:
        return demo_id(self.t.key, kind, name)

    def worker(self, n: int) -> str:
        return f"worker-{self.t.region}-{n}"

    def round_robin_source(self) -> str:
        slug = ENABLED_SOURCES[self._next_source % len(ENABLED_SOURCES)]
        self._next_source += 1
        return slug

    # -- rows

    def job(self, slug: str, job_type: str, status: str, *, source: str, created: datetime, **fields: Any) -> Job:
        payload = fields.pop("payload", None)
        if payload is None:
            payload = {"seconds": DEMO_SLEEP_SECONDS} if job_type == "demo.sleep" else {}
        job = Job(
            tenant_id=self.tenant_id,
            job_id=self.id("job", slug),
            project_id=self.projects[source],
            source_id=self.id("source", source),
            job_type=job_type,
            payload=payload,
            priority=fields.pop("priority", 0),
            status=status,
            attempt=fields.pop("attempt", 0 if status in ("pending", "scheduled") else 1),
            max_attempts=fields.pop("max_attempts", 3),
            run_after=fields.pop("run_after", created),
            cancel_requested=fields.pop("cancel_requested", status == "canceled"),
            created_at=created,
            updated_at=fields.pop("updated_at", None) or fields.get("finished_at") or fields.get("heartbeat_at")
            or fields.get("started_at") or created,
            **fields,
        )
        self.rows.jobs.append(job)
        return job

    def run(
        self,
        run_type: str,
        status: str,
        outcome: str,
        *,
        identity: dict[str, Any],
        created: datetime,
        initiator: tuple[str | None, str],
        **fields: Any,
    ) -> OperationRun:
        run = OperationRun(
            workspace_id=self.workspace_id,
            tenant_id=self.tenant_id,
            project_id=fields.pop("project_id", None),
            user_id=initiator[0],
            initiator_name=initiator[1],
            type=run_type,
            status=status,
            outcome=outcome,
            run_identity_hash=identity_hash(run_type, identity),
            summary_counts=fields.pop("summary_counts", {}),
            failure_summary=fields.pop("failure_summary", []),
            context=fields.pop("context", {}),
            created_at=created,
            updated_at=fields.pop("updated_at", None) or fields.get("completed_at") or fields.get("heartbeat_at")
            or fields.get("started_at") or created,
            **fields,
        )
        self.rows.runs.append(run)
        return run

    # -- the tenant's data

    def build(self) -> _Rows:
        self.sources()
        self.quotas()
        self.standalone_jobs()
        self.pack_runs()
        self.dead_letters()
        self.replay_runs()
        self.fill_source_counters()
        self.saturate_quota()
        return self.rows

    def sources(self) -> None:
        for index, spec in enumerate(SOURCES):
            created = self.ago(days=90 - index * 7)
            self.rows.sources.append(
                Source(
                    tenant_id=self.tenant_id,
                    source_id=self.id("source", spec.slug),
                    project_id=self.projects[spec.slug],
                    name=spec.name,
                    source_type=spec.source_type,
                    enabled=spec.enabled,
                    description=spec.description,
                    created_at=created,
                    updated_at=self.ago(days=20) if not spec.enabled else created,
                )
            )

    def quotas(self) -> None:
        for index, (job_type, max_active, per_hour, burst) in enumerate(QUOTAS):
            paused = job_type == PAUSED_JOB_TYPE
            created = self.ago(days=60 - index)
            self.rows.quotas.append(
                Quota(
                    tenant_id=self.tenant_id,
                    quota_id=self.id("quota", job_type),
                    job_type=job_type,
                    max_active=max_active,
                    max_per_hour=per_hour,
                    burst=burst,
                    paused=paused,
                    paused_by=OPERATOR[0] if paused else None,
                    paused_reason="Holding failing jobs while the upstream registry is repaired (INC-4711)."
                    if paused
                    else None,
                    paused_at=self.ago(hours=2) if paused else None,
                    updated_at=self.ago(hours=2) if paused else created,
                    created_at=created,
                )
            )

    def standalone_jobs(self) -> None:
        src = self.round_robin_source
        self.job("pending-noop-1", "demo.noop", "pending", source=src(), created=self.ago(seconds=30))
        self.job("pending-noop-2", "demo.noop", "pending", source=src(), created=self.ago(seconds=5), priority=5)
        self.job("pending-flaky", "demo.flaky", "pending", source=src(), created=self.ago(minutes=2),
                 payload=self.flaky_payload("upstream.timeout", "transient", "upstream warming up"))
        self.job("pending-sleep", "demo.sleep", "pending", source=src(), created=self.ago(minutes=3),
                 payload={"seconds": 2})
        self.job("scheduled-noop", "demo.noop", "scheduled", source=src(), created=self.ago(minutes=10),
                 run_after=self.ahead(hours=1))
        self.job("scheduled-sleep", "demo.sleep", "scheduled", source=src(), created=self.ago(minutes=10),
                 run_after=self.ahead(minutes=30), payload={"seconds": 2})
        self.job("leased-sleep", "demo.sleep", "leased", source=src(), created=self.ago(minutes=1),
                 lease_owner=self.worker(2), lease_expires_at=self.ahead(minutes=2), payload={"seconds": 3})
        # an operator asked it to stop; its worker stops it at the next heartbeat
        self.job("cancel-requested-sleep", "demo.sleep", "cancel_requested", source=src(), created=self.ago(minutes=4),
                 lease_owner=self.worker(2), lease_expires_at=self.ahead(minutes=2), heartbeat_at=self.ago(seconds=10),
                 started_at=self.ago(minutes=3), cancel_requested=True, cancel_requested_at=self.ago(seconds=20))
        for n, hours in enumerate((1, 5), start=1):
            self.job(f"succeeded-noop-{n}", "demo.noop", "succeeded", source=src(), created=self.ago(hours=hours),
                     started_at=self.ago(hours=hours, seconds=-2), finished_at=self.ago(hours=hours, seconds=-3))
        self.job("canceled-sleep", "demo.sleep", "canceled", source=src(), created=self.ago(hours=3),
                 started_at=self.ago(hours=3, seconds=-5), finished_at=self.ago(hours=2, minutes=50),
                 payload={"seconds": 3})
        # the disabled sources' last jobs, long ago
        for slug, days in (("legacy-ftp", 30), ("partner-poller", 12)):
            self.job(f"last-{slug}", "demo.noop", "succeeded", source=slug, created=self.ago(days=days),
                     started_at=self.ago(days=days, seconds=-1), finished_at=self.ago(days=days, seconds=-2))

    def flaky_payload(self, error_code: str, category: str, message: str) -> dict[str, Any]:
        # failUntil is past: the cause is fixed, so running or replaying it succeeds
        return {"failUntil": _iso(self.ago(minutes=10)), "errorCode": error_code, "category": category,
                "message": message}

    def pack_runs(self) -> None:
        """Every pack-run status, each with its operation run mapped as in spec §7."""
        self.pack("nightly-scan-queued", "nightly-scan", "1.4.0", "queued", source="nightly-scan",
                  created=self.ago(minutes=1), steps=(), steps_total=2, initiator=SCHEDULER)
        self.pack("sbom-refresh-running", "sbom-refresh", "2.1.0", "running", source="registry-webhook",
                  created=self.ago(minutes=4), steps=("succeeded", "running"), steps_total=3, initiator=OPERATOR,
                  heartbeat=self.ago(seconds=15))
        self.pack("billing-close-cancel", "billing-close", "3.0.2", "cancel_requested", source="billing-export",
                  created=self.ago(minutes=20), steps=("running",), steps_total=2, initiator=OPERATOR,
                  heartbeat=self.ago(seconds=30), cancel_requested_at=self.ago(minutes=1))
        self.pack("nightly-scan-done", "nightly-scan", "1.3.9", "succeeded", source="nightly-scan",
                  created=self.ago(days=1), steps=("succeeded",) * 3, steps_total=3, initiator=SCHEDULER)
        self.pack("license-audit", "license-audit", "0.9.1", "partially_succeeded", source="registry-webhook",
                  created=self.ago(hours=30), steps=("succeeded", "succeeded", "succeeded", "failed"), steps_total=4,
                  initiator=OPERATOR,
                  failure=("run.partially_failed", "1 of 4 steps failed (artifact.missing)."))
        self.pack("sbom-refresh-failed", "sbom-refresh", "2.0.7", "failed", source="registry-webhook",
                  created=self.ago(hours=12), steps=("succeeded", "failed"), steps_total=3, initiator=SCHEDULER,
                  failure=("run.failed", "Step 2 of 3 failed (upstream.timeout); remaining steps skipped."))
        self.pack("billing-close-canceled", "billing-close", "3.0.1", "canceled", source="billing-export",
                  created=self.ago(hours=8), steps=("canceled",), steps_total=2, initiator=OPERATOR,
                  failure=("run.canceled", "Canceled by an operator before completion."))
        self.pack("vuln-sync-blocked", "vuln-sync", "1.2.0", "blocked", source="nightly-scan",
                  created=self.ago(hours=2), steps=(), steps_total=2, initiator=SCHEDULER,
                  failure=("run.blocked", "Not started: the quota for demo.fail is paused."))
        self.pack("billing-close-retry", "billing-close", "3.0.1", "succeeded", source="billing-export",
                  created=self.ago(hours=7), steps=("succeeded", "succeeded"), steps_total=2, initiator=OPERATOR,
                  retry_of="billing-close-canceled")

    def pack(
        self,
        slug: str,
        name: str,
        version: str,
        status: str,
        *,
        source: str,
        created: datetime,
        steps: tuple[str, ...],
        steps_total: int,
        initiator: tuple[str | None, str],
        heartbeat: datetime | None = None,
        cancel_requested_at: datetime | None = None,
        failure: tuple[str, str] | None = None,
        retry_of: str | None = None,
    ) -> None:
        pack_run_id = self.id("pack-run", slug)
        started = created + timedelta(seconds=20) if steps or status in ("running", "cancel_requested") else None
        for index, step_status in enumerate(steps):
            step_start = (started or created) + timedelta(seconds=index * STEP_SECONDS)
            job_slug = f"{slug}-step-{index}"
            if (slug, index) in FAILED_STEPS:
                continue  # a dead-lettered job; created with its entry
            active = step_status == "running"
            self.job(
                job_slug,
                "demo.sleep" if active or step_status == "canceled" else "demo.noop",
                step_status,
                source=source,
                created=step_start,
                started_at=step_start,
                heartbeat_at=heartbeat if active else None,
                lease_owner=self.worker(1) if active else None,
                lease_expires_at=self.ahead(seconds=45) if active else None,
                finished_at=None if active else step_start + timedelta(seconds=STEP_SECONDS - 5),
                cancel_requested=step_status == "canceled" or cancel_requested_at is not None,
                pack_run_id=pack_run_id,
                step_index=index,
            )
        finished = None
        if status not in ("queued", "running", "cancel_requested"):
            finished = (started or created) + timedelta(seconds=max(len(steps), 1) * STEP_SECONDS)
        self.rows.pack_runs.append(
            PackRun(
                tenant_id=self.tenant_id,
                pack_run_id=pack_run_id,
                project_id=self.projects[source],
                source_id=self.id("source", source),
                pack_name=name,
                pack_version=version,
                status=status,
                retry_of=self.id("pack-run", retry_of) if retry_of else None,
                steps_total=steps_total,
                steps_succeeded=steps.count("succeeded"),
                steps_failed=steps.count("failed"),
                initiated_by=initiator[0] or initiator[1],
                cancel_requested_at=cancel_requested_at,
                created_at=created,
                updated_at=finished or cancel_requested_at or heartbeat or created,
                started_at=started,
                finished_at=finished,
            )
        )
        run_status, outcome, _ = PACK_RUN_TO_OPERATION[status]
        run_type = "pack_run.retry" if retry_of else "pack_run.execute"
        context: dict[str, Any] = {"pack_run_id": pack_run_id, "pack_name": name, "pack_version": version,
                                   "source_id": self.id("source", source)}
        if retry_of:
            context["retry_of"] = self.id("pack-run", retry_of)
        label = f"Pack run {name} {version}"
        messages = {
            "queued": f"{label} is queued.",
            "running": f"{label} is running ({steps.count('succeeded')} of {steps_total} steps done).",
            "completed": f"{label} finished: {outcome.replace('_', ' ')}.",
        }
        self.rows.run_of_pack[pack_run_id] = self.run(
            run_type,
            run_status,
            outcome,
            identity={"tenant": self.t.key, "pack_run_id": pack_run_id},
            created=created,
            initiator=initiator,
            project_id=self.projects[source],
            context=context,
            summary_counts={"total": steps_total, "succeeded": steps.count("succeeded"),
                            "failed": steps.count("failed")},
            failure_summary=[{"code": failure[0], "message": failure[1]}] if failure else [],
            operator_message=failure[1] if failure else messages[run_status],
            heartbeat_at=heartbeat,
            started_at=started,
            completed_at=finished,
        )

    def dead_letters(self) -> None:
        extra_pending = {"acme": 1, "globex": 0, "initech": 2}[self.t.key]
        for c, cluster in enumerate(CLUSTERS):
            statuses = cluster.statuses + (("pending",) * extra_pending if c == 0 else ())
            for k, status in enumerate(statuses):
                self.dead_letter(c, cluster, k, status)

    def dead_letter(self, c: int, cluster: Cluster, k: int, status: str) -> None:
        slug = f"{cluster.slug}-{k}"
        message = sanitize(cluster.message(self.t, k, self.now))
        template = error_template(message)
        pack = next((p for p, e in FAILED_STEPS.items() if e == (cluster.slug, k)), None)
        if pack:  # the failed step of a pack run: dead-lettered when that step ended
            pack_run = self.pack_run(pack[0])
            step_start = (pack_run.started_at or pack_run.created_at) + timedelta(seconds=pack[1] * STEP_SECONDS)
            dead_at = step_start + timedelta(seconds=STEP_SECONDS - 5)
            source = self.pack_source(pack[0])
        else:
            dead_at = self.ago(hours=0.25 + (c * 7 + k * 13) % 72, minutes=c)
            source = self.round_robin_source()
        attempts = 3 if cluster.retryable else 1
        if cluster.job_type == "demo.fail":
            payload: dict[str, Any] = {"errorCode": cluster.error_code, "category": cluster.category,
                                       "message": message, "retryable": cluster.retryable}
        elif cluster.job_type == "demo.flaky":
            payload = self.flaky_payload(cluster.error_code, cluster.category, message)
        else:
            payload = {"seconds": _number(self.t.key, slug, low=1, high=DEMO_SLEEP_SECONDS)}
        created = dead_at - timedelta(minutes=5 * attempts)
        job = self.job(
            slug,
            cluster.job_type,
            "timed_out" if cluster.error_code == "job.deadline_exceeded" else "failed",
            source=source,
            created=created,
            payload=payload,
            attempt=attempts,
            started_at=dead_at - timedelta(minutes=1),
            finished_at=dead_at,
            last_error_code=cluster.error_code,
            last_error_category=cluster.category,
            last_error_message=message,
            pack_run_id=self.id("pack-run", pack[0]) if pack else None,
            step_index=pack[1] if pack else None,
        )
        entry = DeadLetterEntry(
            tenant_id=self.tenant_id,
            entry_id=self.id("dead-letter", slug),
            project_id=job.project_id,
            job_id=job.job_id,
            job_type=job.job_type,
            source_id=job.source_id,
            category=cluster.category,
            error_code=cluster.error_code,
            message=message,
            error_template=template,
            template_hash=template_hash(cluster.error_code, template),
            payload=payload,
            attempts=attempts,
            status="pending" if status == "returned" else status,
            replay_count=0,
            first_dead_lettered_at=dead_at,
            dead_lettered_at=dead_at,
            updated_at=dead_at,
        )
        if status in ("replaying", "replayed", "returned"):
            replayed_at = self.ago(seconds=20) if status == "replaying" else dead_at + (self.now - dead_at) / 2
            replay_status = {"replaying": "pending", "replayed": "succeeded", "returned": "failed"}[status]
            replay = self.job(
                f"{slug}-replay",
                cluster.job_type,
                replay_status,
                source=source,
                created=replayed_at,
                payload=payload,
                attempt=0 if replay_status == "pending" else attempts,
                started_at=None if replay_status == "pending" else replayed_at + timedelta(seconds=2),
                finished_at=None if replay_status == "pending" else replayed_at + timedelta(seconds=4),
                replay_of_entry_id=entry.entry_id,
                last_error_code=cluster.error_code if status == "returned" else None,
                last_error_category=cluster.category if status == "returned" else None,
                last_error_message=message if status == "returned" else None,
            )
            entry.replay_count = 1
            entry.last_replayed_at = replayed_at
            entry.last_replay_job_id = replay.job_id
            entry.updated_at = replayed_at
            if status == "returned":  # the replay failed again and came back to this entry
                entry.dead_lettered_at = entry.updated_at = replay.finished_at or replayed_at
        elif status == "discarded":
            entry.updated_at = dead_at + timedelta(minutes=30)
        self.rows.entries.append(entry)

    def pack_run(self, slug: str) -> PackRun:
        pack_run_id = self.id("pack-run", slug)
        return next(p for p in self.rows.pack_runs if p.pack_run_id == pack_run_id)

    def pack_source(self, slug: str) -> str:
        return next(s.slug for s in SOURCES if self.id("source", s.slug) == self.pack_run(slug).source_id)

    def entry(self, slug: str) -> DeadLetterEntry:
        entry_id = self.id("dead-letter", slug)
        return next(e for e in self.rows.entries if e.entry_id == entry_id)

    def replay_runs(self) -> None:
        """Dead-letter replays in the remaining lifecycle states: likely stale, reconciled, terminal."""
        # likely stale: running, its last heartbeat hours ago
        self.run(
            "deadletter.replay_pending", "running", "pending",
            identity={"tenant": self.t.key, "filter": {"errorCode": "db.connection_refused"}},
            created=self.ago(hours=3, minutes=10), initiator=OPERATOR,
            context={"filter": {"errorCode": "db.connection_refused"}, "maxEntries": 100, "ratePerSecond": 5,
                     "cutoff": _iso(self.ago(hours=3, minutes=10))},
            summary_counts={"total": 2, "processed": 0, "replayed": 0, "skipped": 0},
            operator_message="Replaying 2 pending entries.",
            started_at=self.ago(hours=3, minutes=9), heartbeat_at=self.ago(hours=3),
        )
        # likely stale: queued for hours, never started
        missing = [self.entry("missing-0").entry_id, self.entry("missing-1").entry_id]
        self.run(
            "deadletter.replay_batch", "queued", "pending",
            identity={"tenant": self.t.key, "entry_ids": missing},
            created=self.ago(hours=6), initiator=OPERATOR,
            context={"entry_ids": missing, "dryRun": False},
            summary_counts={"total": 2, "processed": 0},
            operator_message="Replay of 2 entries is queued.",
        )
        # reconciled: went stale yesterday, failed by the scheduled reconciler
        last_heartbeat = self.ago(hours=25)
        reconciled_at = self.ago(hours=20)
        reason = "No heartbeat for more than 15 minutes; the reconciler marked the run failed."
        self.run(
            "deadletter.replay_pending", "completed", "failed",
            identity={"tenant": self.t.key, "filter": {"category": "throttled"}},
            created=self.ago(hours=26), initiator=OPERATOR,
            context={"filter": {"category": "throttled"}, "maxEntries": 50, "ratePerSecond": 2,
                     "cutoff": _iso(self.ago(hours=26))},
            summary_counts={"total": 1, "processed": 0, "replayed": 0, "skipped": 0},
            failure_summary=[{"code": "run.stale_no_heartbeat", "message": reason}],
            operator_message=reason,
            started_at=self.ago(hours=26) + timedelta(seconds=5),
            heartbeat_at=last_heartbeat,
            completed_at=reconciled_at,
            reconciled_at=reconciled_at,
            reconciliation={
                "source": "scheduled_reconciler",
                "reason_code": "run.stale_no_heartbeat",
                "reason_message": reason,
                "evidence": {"last_heartbeat_at": _iso(last_heartbeat),
                             "threshold_seconds": RECONCILE_THRESHOLD_SECONDS},
            },
        )
        # terminal: a batch replay that replayed one entry and skipped a discarded one
        batch = [self.entry("timeout-2").entry_id, self.entry("invalid-1").entry_id]
        replayed_at = self.entry("timeout-2").last_replayed_at or self.now
        self.run(
            "deadletter.replay_batch", "completed", "succeeded",
            identity={"tenant": self.t.key, "entry_ids": batch},
            created=replayed_at - timedelta(seconds=3), initiator=OPERATOR,
            context={"entry_ids": batch, "dryRun": False},
            summary_counts={"total": 2, "processed": 2, "replayed": 1, "skipped": 1},
            operator_message="Replayed 1 entry; skipped 1 (discarded).",
            started_at=replayed_at - timedelta(seconds=2),
            completed_at=replayed_at + timedelta(seconds=1),
        )

    def fill_source_counters(self) -> None:
        for source in self.rows.sources:
            jobs = [j for j in self.rows.jobs if j.source_id == source.source_id]
            source.jobs_submitted = len(jobs)
            source.jobs_active = sum(
                j.status in ("pending", "scheduled", "leased", "running", "cancel_requested") for j in jobs
            )
            source.jobs_failed = sum(j.status in ("failed", "timed_out") for j in jobs)
            source.last_job_at = max((j.created_at for j in jobs), default=None)

    def saturate_quota(self) -> None:
        active = sum(
            j.job_type == SATURATED_JOB_TYPE and j.status in ("leased", "running", "cancel_requested") for j in self.rows.jobs
        )
        quota = next(q for q in self.rows.quotas if q.job_type == SATURATED_JOB_TYPE)
        quota.max_active = active


def _housekeeping_run(workspace_id: int, workspace: str, tenants: int, now: datetime) -> OperationRun:
    """The reconciler's workspace-scoped run that reconciled each tenant's stale replay."""
    at = now - timedelta(hours=20)
    run_type = "ops.reconcile"
    return OperationRun(
        workspace_id=workspace_id,
        tenant_id=None,
        user_id=RECONCILER[0],
        initiator_name=RECONCILER[1],
        type=run_type,
        status="completed",
        outcome="succeeded",
        run_identity_hash=identity_hash(run_type, {"workspace": workspace, "trigger": "demo-seed"}),
        summary_counts={"total": tenants, "succeeded": tenants, "failed": 0, "reconciled": tenants},
        failure_summary=[],
        context={"workspace": workspace, "trigger": "schedule",
                 "threshold_seconds": RECONCILE_THRESHOLD_SECONDS},
        operator_message=f"Reconciled {tenants} stale run(s).",
        started_at=at - timedelta(seconds=4),
        completed_at=at,
        created_at=at - timedelta(seconds=5),
        updated_at=at,
    )


# --- writing -----------------------------------------------------------------------------------


async def _ensure_tenants(session: AsyncSession) -> tuple[dict[str, Tenant], dict[str, Workspace]]:
    tenants: dict[str, Tenant] = {}
    for spec in TENANTS:
        tenant = await add_tenant(session, spec.key, spec.workspace, external_id=demo_external_id(spec.key))
        tenant.display_name = spec.display_name
        tenants[spec.key] = tenant
    workspaces = {
        ws.key: ws
        for ws in (await session.execute(select(Workspace).where(Workspace.key.in_(list(WORKSPACES))))).scalars()
    }
    for key, name in WORKSPACES.items():
        workspaces[key].name = name
    return tenants, workspaces


async def seed_demo(
    sessions: async_sessionmaker[AsyncSession], *, now: datetime | None = None
) -> dict[str, int]:
    """Create or replace the demo data (``jobgate seed --demo --reset``); return the number of rows
    per table. Whatever the demo tenants hold is replaced; other tenants are left alone."""
    async with sessions.begin() as session:
        return await _seed(session, (now or datetime.now(UTC)).astimezone(UTC))


async def seed_demo_if_empty(
    sessions: async_sessionmaker[AsyncSession], *, now: datetime | None = None
) -> dict[str, int] | None:
    """Seed the demo data into a database without tenants (``jobgate serve --demo``,
    ``jobgate seed --demo``); return None, changing nothing, when it has any tenant: a restart
    keeps what its users did, and only ``--reset`` starts over."""
    async with sessions.begin() as session:
        if (await session.execute(select(Tenant.id).limit(1))).first() is not None:
            return None
        return await _seed(session, (now or datetime.now(UTC)).astimezone(UTC))


async def _seed(session: AsyncSession, now: datetime) -> dict[str, int]:
    tenants, workspaces = await _ensure_tenants(session)
    tenant_ids = [t.id for t in tenants.values()]

    rows = _Rows()
    for spec in TENANTS:
        built = _TenantDemo(spec, tenants[spec.key].id, workspaces[spec.workspace].id, now).build()
        for name in ("sources", "quotas", "jobs", "entries", "pack_runs", "runs"):
            getattr(rows, name).extend(getattr(built, name))
        rows.run_of_pack.update(built.run_of_pack)
    housekeeping = [
        _housekeeping_run(ws.id, key, sum(t.workspace == key for t in TENANTS), now)
        for key, ws in workspaces.items()
    ]
    rows.runs.extend(housekeeping)

    demo_runs = or_(
        OperationRun.tenant_id.in_(tenant_ids),
        # every workspace-scoped run of the demo workspaces, the reconciler's own included
        and_(
            OperationRun.tenant_id.is_(None),
            OperationRun.workspace_id.in_([ws.id for ws in workspaces.values()]),
        ),
    )
    previous_ids = {
        (tenant_id, workspace_id, identity): run_id
        for run_id, tenant_id, workspace_id, identity in await session.execute(
            select(OperationRun.id, OperationRun.tenant_id, OperationRun.workspace_id,
                   OperationRun.run_identity_hash).where(demo_runs)
        )
    }
    await session.execute(delete(OperationRun).where(demo_runs))
    for model in (PackRun, DeadLetterEntry, Job, Quota, Source):
        await session.execute(delete(model).where(model.tenant_id.in_(tenant_ids)))  # type: ignore[attr-defined]

    scopes = [(r.tenant_id, r.workspace_id, r.run_identity_hash) for r in rows.runs]
    if len(set(scopes)) != len(scopes):
        raise RuntimeError("demo operation runs must have distinct identities")
    for run, scope in zip(rows.runs, scopes):
        run.id = previous_ids.get(scope)  # None: the database assigns one
    session.add_all(rows.runs)
    await session.flush()
    for pack_run in rows.pack_runs:
        pack_run.operation_run_id = rows.run_of_pack[pack_run.pack_run_id].id
    for batch in (rows.sources, rows.quotas, rows.jobs, rows.entries, rows.pack_runs):
        session.add_all(batch)
        await session.flush()

    return {
        "workspaces": len(workspaces),
        "tenants": len(tenants),
        "sources": len(rows.sources),
        "quotas": len(rows.quotas),
        "jobs": len(rows.jobs),
        "dead_letter_entries": len(rows.entries),
        "pack_runs": len(rows.pack_runs),
        "operation_runs": len(rows.runs),
    }
