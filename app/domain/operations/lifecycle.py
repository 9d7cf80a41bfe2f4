"""The one derivation of a run's active state (spec §7, seed 001): :func:`project`.

Pure: no I/O, the clock is an argument. Every lifecycle surface (the two API routes, the
dashboard, the progress overlay, the canonical list and detail) and the reconciler's choice of
what is stale go through it, so a run means the same thing everywhere. The SQL filters in
``queries.py`` are its translation for the database and are tested against it.

Truth table (``age`` = now minus the evidence time: ``created_at`` for a queued run,
``heartbeat_at`` or else ``started_at`` for a running one; stale means ``age >= threshold``):

=========  ==============================  ===================  ======================  =====================
status     condition                       freshness_state      problem_class           surface (compact/detail)
=========  ==============================  ===================  ======================  =====================
queued     age < queued_seconds            fresh_active         none                    healthy_active
queued     age >= queued_seconds           likely_stale         active_stale_attention  past_expected_lifecycle / likely_stale
running    age < heartbeat_seconds         fresh_active         none                    healthy_active
running    age >= heartbeat_seconds        likely_stale         active_stale_attention  past_expected_lifecycle / likely_stale
running    no heartbeat and no start time  unknown              active_stale_attention  unknown
completed  reconciled, outcome failed      reconciled_failed    terminal_follow_up      no_longer_active
completed  outcome failed/blocked/partial  terminal_normal      terminal_follow_up      no_longer_active
completed  outcome succeeded (or pending)  terminal_normal      none                    no_longer_active
other      (not a lifecycle status)        unknown              none                    unknown
=========  ==============================  ===================  ======================  =====================

Active runs (queued, running) are ``is_currently_active``, ``show_in_active_progress`` and
``keep_active_polling`` whatever their freshness: a stale run stays visible until the reconciler
completes it. Labels never mention "now" (no "3 minutes ago"), so a projection only changes when
the run's state does and polling clients revalidate with a 304.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import msgspec

from app.domain.operations.schemas import OperationRunActiveStateProjection
from app.instants import iso_or_none
from app.thresholds import Thresholds

ACTIVE = ("queued", "running")
FOLLOW_UP_OUTCOMES = ("failed", "blocked", "partially_succeeded")
Surface = Literal["compact", "detail"]

TYPE_LABELS = {
    "pack_run.execute": "Pack run",
    "pack_run.retry": "Pack run retry",
    "deadletter.replay_pending": "Replay pending dead letters",
    "deadletter.replay_batch": "Replay dead-letter batch",
    "deadletter.discard_pending": "Discard pending dead letters",
    "ops.reconcile": "Reconcile stale runs",
}
STATUS_LABELS = {"queued": "Queued", "running": "Running", "completed": "Completed"}
OUTCOME_LABELS = {
    "pending": "Pending",
    "succeeded": "Succeeded",
    "partially_succeeded": "Partially succeeded",
    "blocked": "Blocked",
    "failed": "Failed",
}


def type_label(run_type: str) -> str:
    return TYPE_LABELS.get(run_type, run_type)


def duration(seconds: int) -> str:
    """``90`` -> ``"1m 30s"``: whole units, for labels."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts) or "0s"




class RunShape(Protocol):
    """What the derivation reads of a run: a :class:`RunFacts`, an ``OperationRun`` or a list
    page's row of its columns."""

    @property
    def type(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def heartbeat_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def reconciled_at(self) -> datetime | None: ...
    @property
    def reconciliation(self) -> Mapping[str, Any] | None: ...


@dataclass(frozen=True)
class RunFacts:
    """What the derivation reads of a run (an ``OperationRun`` row or anything shaped like it)."""

    type: str
    status: str
    outcome: str
    created_at: datetime
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    completed_at: datetime | None = None
    reconciled_at: datetime | None = None
    reconciliation: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, run: Any) -> RunFacts:
        return cls(
            type=run.type,
            status=run.status,
            outcome=run.outcome,
            created_at=run.created_at,
            started_at=run.started_at,
            heartbeat_at=run.heartbeat_at,
            completed_at=run.completed_at,
            reconciled_at=run.reconciled_at,
            reconciliation=run.reconciliation,
        )


class Projection(msgspec.Struct, frozen=True):
    """The projection of one run (a struct: a list page makes one per run, and a struct is
    cheaper to make than a frozen dataclass)."""

    freshness_state: str
    problem_class: str
    surface_category: str  # as the surface asked for it (compact or detail)
    compact_label: str | None
    diagnostic_label: str | None
    lifecycle_label: str | None
    guidance: str | None
    stale_lineage_note: str | None
    is_currently_active: bool
    is_reconciled: bool
    show_in_active_progress: bool
    keep_active_polling: bool
    # diagnostics (not part of the seed-001 projection)
    threshold_seconds: int = 0
    evidence: Mapping[str, Any] = msgspec.field(default_factory=dict)

    @property
    def listed_freshness(self) -> str:
        """The state on the seed-000 routes, whose enum has no ``unknown``: an active run without
        evidence is listed as likely stale (it needs the same look), anything else as terminal."""
        if self.freshness_state != "unknown":
            return self.freshness_state
        return "likely_stale" if self.is_currently_active else "terminal_normal"

    def active_state(self) -> OperationRunActiveStateProjection:
        return OperationRunActiveStateProjection(
            freshness_state=self.freshness_state,  # type: ignore[arg-type]
            problem_class=self.problem_class,  # type: ignore[arg-type]
            surface_category=self.surface_category,  # type: ignore[arg-type]
            compact_label=self.compact_label,
            diagnostic_label=self.diagnostic_label,
            lifecycle_label=self.lifecycle_label,
            guidance=self.guidance,
            stale_lineage_note=self.stale_lineage_note,
            is_currently_active=self.is_currently_active,
            is_reconciled=self.is_reconciled,
            show_in_active_progress=self.show_in_active_progress,
            keep_active_polling=self.keep_active_polling,
        )


def evidence_time(facts: RunShape) -> datetime | None:
    """The moment an active run last showed it is alive."""
    if facts.status == "queued":
        return facts.created_at
    if facts.status == "running":
        return facts.heartbeat_at or facts.started_at
    return None


def reconcile_due(facts: RunShape, now: datetime, thresholds: Thresholds) -> bool:
    """Whether the reconciler fails this run: active and without progress for the type's
    ``reconcile_after_seconds`` (a running run without any evidence counts from its creation)."""
    if facts.status not in ACTIVE:
        return False
    at = evidence_time(facts) or facts.created_at
    return (now - at).total_seconds() >= thresholds.of(facts.type).reconcile_after_seconds


def threshold_of(facts: RunShape, thresholds: Thresholds) -> int:
    values = thresholds.of(facts.type)
    return values.queued_seconds if facts.status == "queued" else values.heartbeat_seconds


def _active(facts: RunShape, now: datetime, thresholds: Thresholds, surface: Surface) -> Projection:
    threshold = threshold_of(facts, thresholds)
    reconcile_after = thresholds.of(facts.type).reconcile_after_seconds
    at = evidence_time(facts)
    status_label = STATUS_LABELS[facts.status]
    common = {
        "is_currently_active": True,
        "is_reconciled": False,
        "show_in_active_progress": True,
        "keep_active_polling": True,
        "threshold_seconds": threshold,
        "lifecycle_label": status_label,
    }
    if at is None:
        return Projection(
            freshness_state="unknown",
            problem_class="active_stale_attention",
            surface_category="unknown",
            compact_label="State unknown",
            diagnostic_label="Running, but no heartbeat or start time was recorded",
            guidance="The run's worker never reported a start or a heartbeat. Check the worker logs; the "
            f"reconciler fails the run {duration(reconcile_after)} after its creation.",
            stale_lineage_note=None,
            evidence={"last_heartbeat_at": None, "started_at": None},
            **common,  # type: ignore[arg-type]
        )
    evidence = (
        {"created_at": iso_or_none(facts.created_at)}
        if facts.status == "queued"
        else {"last_heartbeat_at": iso_or_none(facts.heartbeat_at), "started_at": iso_or_none(facts.started_at)}
    )
    age = (now - at).total_seconds()
    if age < threshold:
        expectation = (
            f"expected to start within {duration(threshold)}"
            if facts.status == "queued"
            else f"heartbeat expected at least every {duration(threshold)}"
        )
        return Projection(
            freshness_state="fresh_active",
            problem_class="none",
            surface_category="healthy_active",
            compact_label=status_label,
            diagnostic_label=f"{status_label}; {expectation}",
            guidance=None,
            stale_lineage_note=None,
            evidence=evidence,
            **common,  # type: ignore[arg-type]
        )
    if facts.status == "queued":
        diagnostic = (
            f"Likely stale: queued since {iso_or_none(at)} without starting (threshold {duration(threshold)})"
        )
        guidance = (
            "The run has not started in the time its type expects. Check that workers are running and "
            f"that its quota is not paused; the reconciler fails it after {duration(reconcile_after)} "
            "without a start."
        )
    else:
        diagnostic = f"Likely stale: no heartbeat since {iso_or_none(at)} (threshold {duration(threshold)})"
        guidance = (
            "The run's worker stopped reporting. Check the worker processes; the reconciler fails the run "
            f"after {duration(reconcile_after)} without a heartbeat and cancels its remaining jobs."
        )
    return Projection(
        freshness_state="likely_stale",
        problem_class="active_stale_attention",
        surface_category="past_expected_lifecycle" if surface == "compact" else "likely_stale",
        compact_label="Past expected lifecycle",
        diagnostic_label=diagnostic,
        guidance=guidance,
        stale_lineage_note=None,
        evidence=evidence,
        **common,  # type: ignore[arg-type]
    )


_COMPLETED = {
    "surface_category": "no_longer_active",
    "lifecycle_label": STATUS_LABELS["completed"],
    "is_currently_active": False,
    "show_in_active_progress": False,
    "keep_active_polling": False,
}


def _completed(facts: RunShape, thresholds: Thresholds) -> Projection:
    outcome_label = OUTCOME_LABELS.get(facts.outcome, facts.outcome)
    common = _COMPLETED
    if facts.reconciled_at is not None and facts.outcome == "failed":
        record = dict(facts.reconciliation or {})
        source = record.get("source", "scheduled_reconciler")
        reason = record.get("reason_code", "run.reconciled")
        evidence = dict(record.get("evidence") or {})
        threshold = evidence.get("threshold_seconds")
        if type(threshold) is not int:
            threshold = thresholds.of(facts.type).reconcile_after_seconds
        last = evidence.get("last_heartbeat_at")
        lineage = (
            f"Went stale (last heartbeat {last}) and was failed by the {source.replace('_', ' ')} "
            f"at {iso_or_none(facts.reconciled_at)}."
            if last
            else f"Went stale and was failed by the {source.replace('_', ' ')} at {iso_or_none(facts.reconciled_at)}."
        )
        return Projection(
            freshness_state="reconciled_failed",
            problem_class="terminal_follow_up",
            compact_label="Failed (reconciled)",
            diagnostic_label=f"Reconciled as failed: {reason}",
            guidance="The run stopped reporting and was failed so that its jobs and quota slots were released. "
            "Start the operation again if its work is still needed.",
            stale_lineage_note=lineage,
            is_reconciled=True,
            threshold_seconds=threshold,
            evidence={**evidence, "reconciled_at": iso_or_none(facts.reconciled_at), "reason_code": reason},
            **common,  # type: ignore[arg-type]
        )
    follow_up = facts.outcome in FOLLOW_UP_OUTCOMES
    return Projection(
        freshness_state="terminal_normal",
        problem_class="terminal_follow_up" if follow_up else "none",
        compact_label=outcome_label,
        diagnostic_label=None,
        guidance="Review the failure summary before running the operation again." if follow_up else None,
        stale_lineage_note=None,
        is_reconciled=facts.reconciled_at is not None,
        threshold_seconds=thresholds.of(facts.type).heartbeat_seconds,
        evidence={"completed_at": iso_or_none(facts.completed_at)},
        **common,  # type: ignore[arg-type]
    )


def project(facts: RunShape, now: datetime, thresholds: Thresholds, *, surface: Surface = "compact") -> Projection:
    """The active-state projection of one run at ``now`` (see the module's truth table)."""
    if facts.status in ACTIVE:
        return _active(facts, now, thresholds, surface)
    if facts.status == "completed":
        return _completed(facts, thresholds)
    return Projection(
        freshness_state="unknown",
        problem_class="none",
        surface_category="unknown",
        compact_label="State unknown",
        diagnostic_label=f"Unrecognised status {facts.status!r}",
        lifecycle_label=None,
        guidance=None,
        stale_lineage_note=None,
        is_currently_active=False,
        is_reconciled=False,
        show_in_active_progress=False,
        keep_active_polling=False,
    )


def listed_state(facts: RunShape, now: datetime, thresholds: Thresholds) -> tuple[str, bool]:
    """What the seed-000 list shows of a run's projection, its ``listed_freshness`` and
    ``is_reconciled``, without making the projection (a list page has 50 runs, and their labels,
    guidance and evidence are not shown there)."""
    status = facts.status
    if status in ACTIVE:
        at = evidence_time(facts)
        if at is None or (now - at).total_seconds() >= threshold_of(facts, thresholds):
            return "likely_stale", False
        return "fresh_active", False
    if status == "completed" and facts.reconciled_at is not None:
        return ("reconciled_failed", True) if facts.outcome == "failed" else ("terminal_normal", True)
    return "terminal_normal", False
