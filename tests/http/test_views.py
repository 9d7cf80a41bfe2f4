"""Views made by name (``app/core/views.py``): every field from the attribute of its name."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from app.core.views import by_name
from app.domain.audit.queries import view as audit_view
from app.domain.audit.schemas import AuditView
from app.domain.jobs.schemas import JobView
from app.domain.jobs.service import view as job_view
from app.domain.packruns.schemas import PackRunView, StepCounts
from app.domain.packruns.service import view as packrun_view
from app.domain.sources.schemas import JobCounts, SourceView
from app.domain.sources.service import view as source_view
from app.storage.models import AuditRecord, Job, PackRun, Source


class Pair(msgspec.Struct):
    second: int
    first: str


class One(msgspec.Struct):
    only: int


def test_each_field_comes_from_the_attribute_of_its_name_whatever_the_order():
    Row = namedtuple("Row", "first unused second")
    assert by_name(Pair)(Row("a", None, 2)) == Pair(second=2, first="a")
    assert by_name(One)(namedtuple("R", "only")(7)) == One(only=7)


def test_an_object_without_one_of_the_fields_is_refused():
    with pytest.raises(AttributeError):
        by_name(Pair)(namedtuple("Row", "first")("a"))


def test_a_job_entity_and_a_row_of_its_columns_give_the_same_view():
    now = datetime(2026, 12, 2, tzinfo=UTC)
    values = {column.key: None for column in Job.__table__.columns}
    values.update(
        job_id="job-1", job_type="demo.noop", source_id="src-1", status="queued", priority=3, attempt=0,
        max_attempts=3, payload={"n": 1}, run_after=now, created_at=now, updated_at=now, tenant_id=1,
    )  # fmt: skip
    entity = Job(**values)
    row = namedtuple("Row", values)(**values)
    made = job_view(entity)
    assert made == job_view(row)
    # the job's own columns; why it waits and its dead-letter entry are read beside it (none here)
    assert made == JobView(**{field: values.get(field) for field in JobView.__struct_fields__})
    assert (made.waiting_reason, made.dead_letter_entry_id) == (None, None)


def _distinct_row(model: type) -> Any:
    """A row of ``model``'s columns, each holding a value no other column holds."""
    names = [column.key for column in model.__table__.columns]
    return namedtuple("Row", names)(*(f"value-of-{name}" for name in names))


@pytest.mark.parametrize(
    ("make", "model", "view_type", "derived"),
    [
        (source_view, Source, SourceView, {"job_counts": lambda r: JobCounts(r.jobs_submitted, r.jobs_active, r.jobs_failed)}),
        (packrun_view, PackRun, PackRunView, {"step_counts": lambda r: StepCounts(r.steps_total, r.steps_succeeded, r.steps_failed)}),
        (lambda r: audit_view(r, "tenant-key"), AuditRecord, AuditView, {"audit_id": lambda r: r.id, "tenant": lambda r: "tenant-key"}),
    ],
    ids=["source", "pack-run", "audit"],
)
def test_each_view_takes_each_field_from_the_column_of_its_name(make, model, view_type, derived):
    row = _distinct_row(model)
    made = make(row)
    for field in view_type.__struct_fields__:
        expected = derived[field](row) if field in derived else getattr(row, field)
        assert getattr(made, field) == expected, field


def test_the_operation_run_list_item_takes_each_field_from_the_column_of_its_name():
    from app.domain.operations.schemas import OperationRunListItem
    from app.domain.operations.service import list_item
    from app.storage.models import OperationRun

    row = _distinct_row(OperationRun)
    made = list_item(row, "fresh_active", True)
    derived = {"freshness_state": "fresh_active", "reconciled": True, "type_label": row.type}  # an unknown type: its id
    for field in OperationRunListItem.__struct_fields__:
        assert getattr(made, field) == (derived[field] if field in derived else getattr(row, field)), field
