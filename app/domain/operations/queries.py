"""The derivation of ``lifecycle.project`` translated into SQL conditions, so that filters on the
derived freshness state and problem class page exactly in the database. The thresholds become
cutoff timestamps per type (computed here from ``now``), so the conditions are portable and use
the indexes. tests/operations/test_queries.py checks them row by row against ``project``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, not_, or_

from app.domain.operations.lifecycle import FOLLOW_UP_OUTCOMES
from app.storage.models import OperationRun as R
from app.thresholds import Thresholds, TypeThresholds

LIFECYCLE_STATUSES = ("queued", "running", "completed")
_no_evidence = and_(R.status == "running", R.heartbeat_at.is_(None), R.started_at.is_(None))


def _per_type(
    thresholds: Thresholds, condition: Callable[[TypeThresholds], ColumnElement[bool]]
) -> ColumnElement[bool]:
    named = thresholds.named_types
    clauses = [and_(R.type == t, condition(thresholds.of(t))) for t in named]
    clauses.append(and_(R.type.not_in(named), condition(thresholds.by_type["*"])))
    return or_(*clauses)


def _ago(now: datetime, seconds: int) -> datetime:
    return now - timedelta(seconds=seconds)


def stale(now: datetime, thresholds: Thresholds) -> ColumnElement[bool]:
    """``likely_stale``: at or past the type's threshold (the boundary is stale)."""
    return _per_type(
        thresholds,
        lambda v: or_(
            and_(R.status == "queued", R.created_at <= _ago(now, v.queued_seconds)),
            and_(
                R.status == "running",
                func.coalesce(R.heartbeat_at, R.started_at) <= _ago(now, v.heartbeat_seconds),
            ),
        ),
    )


def fresh(now: datetime, thresholds: Thresholds) -> ColumnElement[bool]:
    return _per_type(
        thresholds,
        lambda v: or_(
            and_(R.status == "queued", R.created_at > _ago(now, v.queued_seconds)),
            and_(
                R.status == "running",
                func.coalesce(R.heartbeat_at, R.started_at) > _ago(now, v.heartbeat_seconds),
            ),
        ),
    )


def reconcile_due(now: datetime, thresholds: Thresholds) -> ColumnElement[bool]:
    """``lifecycle.reconcile_due`` in SQL: the reconciler's candidates."""
    return _per_type(
        thresholds,
        lambda v: or_(
            and_(R.status == "queued", R.created_at <= _ago(now, v.reconcile_after_seconds)),
            and_(
                R.status == "running",
                func.coalesce(R.heartbeat_at, R.started_at, R.created_at)
                <= _ago(now, v.reconcile_after_seconds),
            ),
        ),
    )


reconciled_failed = and_(R.status == "completed", R.reconciled_at.is_not(None), R.outcome == "failed")
terminal_normal = and_(R.status == "completed", or_(R.reconciled_at.is_(None), R.outcome != "failed"))


def listed_freshness(state: str, now: datetime, thresholds: Thresholds) -> ColumnElement[bool]:
    """The seed-000 ``freshness_state`` filter (``Projection.listed_freshness``)."""
    if state == "fresh_active":
        return fresh(now, thresholds)
    if state == "likely_stale":
        return or_(stale(now, thresholds), _no_evidence)
    if state == "reconciled_failed":
        return reconciled_failed
    if state == "terminal_normal":
        return terminal_normal
    return false()


def freshness(state: str, now: datetime, thresholds: Thresholds) -> ColumnElement[bool]:
    """The seed-001 ``freshness_state`` (with ``unknown``) among lifecycle statuses."""
    if state == "likely_stale":
        return stale(now, thresholds)
    if state == "unknown":
        return _no_evidence
    return listed_freshness(state, now, thresholds)


def problem_class(name: str, now: datetime, thresholds: Thresholds) -> ColumnElement[bool]:
    follow_up = and_(R.status == "completed", R.outcome.in_(FOLLOW_UP_OUTCOMES))
    if name == "active_stale_attention":
        return or_(stale(now, thresholds), _no_evidence)
    if name == "terminal_follow_up":
        return follow_up
    if name == "none":
        return or_(
            fresh(now, thresholds), and_(R.status == "completed", not_(R.outcome.in_(FOLLOW_UP_OUTCOMES)))
        )
    return false()


def reconciled(flag: bool) -> ColumnElement[Any]:
    return (
        and_(R.status == "completed", R.reconciled_at.is_not(None))
        if flag
        else or_(R.status != "completed", R.reconciled_at.is_(None))
    )
