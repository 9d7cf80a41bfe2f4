"""The job engine: the worker (claiming, running, retrying, dead-lettering jobs) and the
background steps it runs beside it (replays by filter, the stale-run reconciler)."""
