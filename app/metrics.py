"""Prometheus metrics. Labels are route templates and small enums, never raw paths or tenants."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

REQUESTS = Counter("jobgate_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "jobgate_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUTH_FAILURES = Counter("jobgate_auth_failures_total", "Refused credentials", ["reason"])
RATE_LIMITED = Counter("jobgate_rate_limited_total", "Requests refused by the rate limit")
RATE_LIMIT_FAIL_OPEN = Counter(
    "jobgate_rate_limit_fail_open_total", "Requests let through because the rate-limit store failed"
)
AUDIT_FAILURES = Counter("jobgate_audit_failures_total", "Refusal audit rows that could not be written")


def render() -> bytes:
    """The exposition text; aggregates all processes when PROMETHEUS_MULTIPROC_DIR is set."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)
