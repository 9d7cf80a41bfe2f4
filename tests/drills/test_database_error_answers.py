"""The answers the restart drill relies on, for each driver error a restart produces, without a
restart: errors raised as SQLAlchemy's asyncpg adapter raises them (its generic ``Error`` with the
driver's error as cause) map to 503 when the database cannot serve now, and only then."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError

from app.http.problems import to_problem

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)


def _as_sqlalchemy_raises_it(driver_error: Exception) -> DBAPIError:
    try:
        try:
            raise driver_error
        except Exception as exc:
            raise DBAPI.Error(exc.args[0], exc) from exc
    except Exception as adapted:  # noqa: BLE001 - whatever the adapter raised is what the gateway sees
        return DBAPIError.instance("SELECT 1", None, adapted, DBAPI.Error)


@pytest.mark.parametrize(
    "driver_error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CrashShutdownError(
            "terminating connection because of crash of another server process"
        ),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_database_that_cannot_serve_now_is_503_with_retry_after(driver_error):
    problem = to_problem(_as_sqlalchemy_raises_it(driver_error))
    assert (problem.status, problem.code) == (503, "service_unavailable")
    assert problem.headers["Retry-After"]


def test_an_error_of_the_query_itself_stays_500():
    problem = to_problem(
        _as_sqlalchemy_raises_it(asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'))
    )
    assert (problem.status, problem.code) == (500, "internal_error")
