"""The one derivation of a run's active state: every truth-table row, the time boundaries, and
properties that hold for any run and any clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.operations.lifecycle import RunFacts, listed_state, project, reconcile_due
from app.thresholds import DEFAULTS, ThresholdsError, parse

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TH = parse(None)
PACK = DEFAULTS["pack_run.execute"]


def facts(status: str, outcome: str = "pending", *, age: float = 0, **fields) -> RunFacts:  # type: ignore[no-untyped-def]
    at = NOW - timedelta(seconds=age)
    run_type = fields.pop("type", "pack_run.execute")
    base = {"created_at": at}
    if status == "running":
        base.update(started_at=at, heartbeat_at=at)
    if status == "completed":
        base.update(started_at=at, completed_at=at)
    base.update(fields)
    return RunFacts(type=run_type, status=status, outcome=outcome, **base)  # type: ignore[arg-type]


RECONCILED = {
    "reconciled_at": NOW,
    "reconciliation": {
        "source": "scheduled_reconciler",
        "reason_code": "run.stale_no_heartbeat",
        "evidence": {"last_heartbeat_at": "2026-11-23T10:00:00Z", "threshold_seconds": 1800},
    },
}

# (facts, freshness_state, problem_class, compact surface, detail surface, active, reconciled)
ROWS = [
    (
        "queued_fresh",
        facts("queued", age=PACK.queued_seconds - 1),
        "fresh_active",
        "none",
        "healthy_active",
        "healthy_active",
        True,
        False,
    ),
    (
        "queued_stale",
        facts("queued", age=PACK.queued_seconds),
        "likely_stale",
        "active_stale_attention",
        "past_expected_lifecycle",
        "likely_stale",
        True,
        False,
    ),
    (
        "running_fresh",
        facts("running", age=PACK.heartbeat_seconds - 1),
        "fresh_active",
        "none",
        "healthy_active",
        "healthy_active",
        True,
        False,
    ),
    (
        "running_stale",
        facts("running", age=PACK.heartbeat_seconds),
        "likely_stale",
        "active_stale_attention",
        "past_expected_lifecycle",
        "likely_stale",
        True,
        False,
    ),
    (
        "running_no_evidence",
        facts("running", started_at=None, heartbeat_at=None),
        "unknown",
        "active_stale_attention",
        "unknown",
        "unknown",
        True,
        False,
    ),
    (
        "reconciled_failed",
        facts("completed", "failed", **RECONCILED),
        "reconciled_failed",
        "terminal_follow_up",
        "no_longer_active",
        "no_longer_active",
        False,
        True,
    ),
    (
        "failed",
        facts("completed", "failed"),
        "terminal_normal",
        "terminal_follow_up",
        "no_longer_active",
        "no_longer_active",
        False,
        False,
    ),
    (
        "blocked",
        facts("completed", "blocked"),
        "terminal_normal",
        "terminal_follow_up",
        "no_longer_active",
        "no_longer_active",
        False,
        False,
    ),
    (
        "partially_succeeded",
        facts("completed", "partially_succeeded"),
        "terminal_normal",
        "terminal_follow_up",
        "no_longer_active",
        "no_longer_active",
        False,
        False,
    ),
    (
        "succeeded",
        facts("completed", "succeeded"),
        "terminal_normal",
        "none",
        "no_longer_active",
        "no_longer_active",
        False,
        False,
    ),
    (
        "succeeded_after_reconciliation_record",
        facts("completed", "succeeded", reconciled_at=NOW),
        "terminal_normal",
        "none",
        "no_longer_active",
        "no_longer_active",
        False,
        True,
    ),
    ("unrecognised_status", facts("paused"), "unknown", "none", "unknown", "unknown", False, False),
]


@pytest.mark.parametrize(
    "run,state,problem,compact,detail,active,reconciled", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_truth_table_row(run, state, problem, compact, detail, active, reconciled) -> None:  # type: ignore[no-untyped-def]
    c = project(run, NOW, TH, surface="compact")
    d = project(run, NOW, TH, surface="detail")
    assert (c.freshness_state, c.problem_class, c.surface_category) == (state, problem, compact)
    assert (d.freshness_state, d.problem_class, d.surface_category) == (state, problem, detail)
    assert (
        c.is_currently_active is active
        and c.keep_active_polling is active
        and c.show_in_active_progress is active
    )
    assert c.is_reconciled is reconciled
    # compact and detail differ only in the surface category
    assert {**msgspec.structs.asdict(c), "surface_category": None} == {**msgspec.structs.asdict(d), "surface_category": None}


def test_stale_runs_have_compact_label_guidance_and_diagnostic() -> None:
    p = project(facts("running", age=10_000), NOW, TH, surface="detail")
    assert p.compact_label == "Past expected lifecycle"
    assert p.diagnostic_label.startswith("Likely stale: no heartbeat since")
    assert p.guidance and "reconciler" in p.guidance
    assert p.threshold_seconds == PACK.heartbeat_seconds


def test_reconciled_run_carries_a_lineage_note_and_the_recorded_threshold() -> None:
    p = project(facts("completed", "failed", **RECONCILED), NOW, TH)
    assert p.stale_lineage_note and "2026-11-23T10:00:00Z" in p.stale_lineage_note
    assert p.threshold_seconds == 1800
    assert p.evidence["reason_code"] == "run.stale_no_heartbeat"


@pytest.mark.parametrize(
    "status,threshold", [("queued", PACK.queued_seconds), ("running", PACK.heartbeat_seconds)]
)
@pytest.mark.parametrize("offset,expected", [(-1, "fresh_active"), (0, "likely_stale"), (1, "likely_stale")])
def test_boundary_is_stale_exactly_at_the_threshold(
    status: str, threshold: int, offset: int, expected: str
) -> None:
    run = facts(status, age=threshold + offset)
    assert project(run, NOW, TH).freshness_state == expected


@pytest.mark.parametrize("offset,expected", [(-1, False), (0, True), (1, True)])
def test_reconcile_boundary(offset: int, expected: bool) -> None:
    assert reconcile_due(facts("running", age=PACK.reconcile_after_seconds + offset), NOW, TH) is expected


def test_heartbeat_counts_over_start_time() -> None:
    run = facts("running", age=10_000, heartbeat_at=NOW - timedelta(seconds=5))
    assert project(run, NOW, TH).freshness_state == "fresh_active"


def test_thresholds_are_per_type_and_overridable() -> None:
    custom = parse(
        '{"deadletter.replay_batch": {"queued_seconds": 10}, "*": {"queued_seconds": 60, "heartbeat_seconds": 60, "reconcile_after_seconds": 60}}'
    )
    queued = facts("queued", age=10, type="deadletter.replay_batch")
    assert project(queued, NOW, custom).freshness_state == "likely_stale"
    assert project(queued, NOW, TH).freshness_state == "fresh_active"
    odd = facts("running", age=60, type="custom.kind")
    assert project(odd, NOW, custom).freshness_state == "likely_stale"


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"x": 1}',
        '{"x": {}}',
        '{"x": {"queued_seconds": 0}}',
        '{"x": {"queued_seconds": "5"}}',
        '{"x": {"other": 5}}',
        '{"x": {"heartbeat_seconds": 5000}}',
        "not json",
    ],
)
def test_invalid_threshold_overrides_name_the_variable(text: str) -> None:
    with pytest.raises(ThresholdsError, match="JOBGATE_LIFECYCLE_THRESHOLDS"):
        parse(text)


moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))
runs = st.builds(
    RunFacts,
    type=st.sampled_from([*DEFAULTS, "other.type"]),
    status=st.sampled_from(["queued", "running", "completed", "weird"]),
    outcome=st.sampled_from(["pending", "succeeded", "partially_succeeded", "blocked", "failed"]),
    created_at=moments,
    started_at=st.none() | moments,
    heartbeat_at=st.none() | moments,
    completed_at=st.none() | moments,
    reconciled_at=st.none() | moments,
)


@given(run=runs, now=moments)
def test_property_active_runs_stay_visible_and_polling(run: RunFacts, now: datetime) -> None:
    p = project(run, now, TH)
    active = run.status in ("queued", "running")
    assert p.is_currently_active is active
    assert p.show_in_active_progress is active
    assert p.keep_active_polling is active
    assert (p.freshness_state in ("fresh_active", "likely_stale")) <= active


@given(run=runs, now=moments)
def test_property_stale_means_attention_and_compact_past_expected(run: RunFacts, now: datetime) -> None:
    c, d = project(run, now, TH), project(run, now, TH, surface="detail")
    assert (c.freshness_state == "likely_stale") == (c.surface_category == "past_expected_lifecycle")
    assert (d.freshness_state == "likely_stale") == (d.surface_category == "likely_stale")
    if c.freshness_state == "likely_stale":
        assert c.problem_class == "active_stale_attention"
    if c.freshness_state == "reconciled_failed":
        assert c.is_reconciled and c.problem_class == "terminal_follow_up"
    assert c.listed_freshness in ("fresh_active", "likely_stale", "reconciled_failed", "terminal_normal")


@given(run=runs, now=moments, later=st.integers(min_value=0, max_value=10**7))
def test_property_staleness_is_monotonic_in_time(run: RunFacts, now: datetime, later: int) -> None:
    before = project(run, now, TH).freshness_state
    after = project(run, now + timedelta(seconds=later), TH).freshness_state
    if before == "likely_stale":
        assert after == "likely_stale"
    if reconcile_due(run, now, TH):
        assert reconcile_due(run, now + timedelta(seconds=later), TH)
        assert after in ("likely_stale", "unknown")


@given(run=runs, now=moments, delta=st.integers(min_value=-(10**6), max_value=10**6))
def test_property_labels_do_not_depend_on_the_clock_within_a_state(
    run: RunFacts, now: datetime, delta: int
) -> None:
    a = project(run, now, TH)
    b = project(run, now + timedelta(seconds=delta), TH)
    if a.freshness_state == b.freshness_state:
        assert a == b


@given(run=runs, now=moments, surface=st.sampled_from(["compact", "detail"]))
def test_property_the_listed_state_is_what_the_projection_lists(run: RunFacts, now: datetime, surface: str) -> None:
    """The seed-000 list shows each run's listed freshness and reconciliation without making its
    projection: the two agree for every run at every moment."""
    p = project(run, now, TH, surface=surface)  # type: ignore[arg-type]
    assert listed_state(run, now, TH) == (p.listed_freshness, p.is_reconciled)