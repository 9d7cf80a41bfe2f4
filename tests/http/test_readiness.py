"""/readyz answers ready only when PostgreSQL (at this code's schema) and Redis answer and the
verification keys are current (tests/security/test_key_rotation.py covers the keys)."""

from __future__ import annotations

from sqlalchemy import text

from app.storage.migrate import known_revisions


async def test_ready_when_the_database_is_at_head_and_redis_answers(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok", "keys": "ok"}


async def test_a_database_behind_this_codes_migrations_is_not_ready(client, runtime):
    """A gateway started before its migration ran answers 503 until the migration is applied."""
    head, previous = known_revisions()[-1], known_revisions()[-2]
    async with runtime.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": previous})
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "not_ready"
        assert "schema_behind" in response.json()["detail"]
        assert "retry-after" in response.headers
    finally:
        async with runtime.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert (await client.get("/readyz")).status_code == 200


async def test_a_database_migrated_by_a_newer_release_stays_ready(client, runtime):
    """During a rolling update the new release migrates first; the old release keeps serving."""
    head = known_revisions()[-1]
    async with runtime.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'a-newer-release'"))
    try:
        assert (await client.get("/readyz")).status_code == 200
    finally:
        async with runtime.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
