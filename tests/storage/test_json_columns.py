"""JSON columns are read with msgspec (``app.storage.db.decode_json``) into exactly what the
standard library's reading gives, on PostgreSQL's ``jsonb`` too."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.storage.db import decode_json
from app.storage.models import Job
from tests.api.rows import tenant_rows

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_any_json_document_reads_as_the_standard_library_reads_it(value):
    for document in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert decode_json(document) == json.loads(document)


def test_documents_msgspec_refuses_are_read_by_the_standard_library():
    assert decode_json("[1e400]") == [math.inf]
    assert decode_json('{"n": -1e999}') == {"n": -math.inf}
    assert decode_json('"\\ud800"') == "\ud800"


async def test_jsonb_numbers_beyond_a_float_read_as_the_standard_library_reads_them(runtime, factory):
    _, rows = await tenant_rows(runtime, factory)
    job = rows.job(payload={"n": 1, "nested": {"list": [1.5, "x", None, True]}})
    await rows.add(job)
    extra = '{"huge": 1e400, "tiny": 1.5e-400, "precise": 0.10000000000000000555111512312578270211815834045}'
    async with runtime.sessions.begin() as session:
        await session.execute(
            text("UPDATE jobs SET payload = payload || CAST(:extra AS jsonb) WHERE job_id = :id"),
            {"extra": extra, "id": job.job_id},
        )
    async with runtime.sessions() as session:
        stored = await session.get(Job, (rows.tenant_id, job.job_id))
        as_text = (await session.execute(text("SELECT payload::text FROM jobs WHERE job_id = :id"), {"id": job.job_id})).scalar_one()
    assert stored is not None
    assert stored.payload == json.loads(as_text)
    assert stored.payload["huge"] == 10**400
    assert stored.payload["nested"] == {"list": [1.5, "x", None, True]}
