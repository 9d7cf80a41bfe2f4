"""The application a ``jobgate serve`` worker runs (``app.server.create_served_app``)."""

from __future__ import annotations

import gc

from app.server import create_served_app
from tests.conftest import make_app


async def test_a_served_app_freezes_what_it_holds_once_started_and_a_built_one_does_not(gateway_env, monkeypatch):
    for key, value in gateway_env.items():
        monkeypatch.setenv(key, value)
    gc.unfreeze()
    built = make_app(gateway_env)
    try:
        async with built.lifespan():
            assert gc.get_freeze_count() == 0
        served = create_served_app()
        assert gc.get_freeze_count() == 0  # nothing before start-up
        async with served.lifespan():
            frozen = gc.get_freeze_count()
            assert frozen > 10_000  # modules, routes, the runtime: everything started
            runtime = served.state.runtime
            assert not any(o is runtime for o in gc.get_objects())  # in no generation: frozen
    finally:
        gc.unfreeze()
