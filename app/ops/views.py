"""How each payload of the gateway reads as a table: the columns of each list, the layouts of
stats, previews and pack runs."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from app.ops.render import Column, fields_table, table, text


def when(key: str) -> Any:
    """An instant of the payload, to the second (``2026-12-06 14:12:28``)."""

    def get(row: dict[str, Any]) -> str | None:
        value = row.get(key)
        if not isinstance(value, str):
            return value
        return value.replace("T", " ")[:19]

    return get


def steps(row: dict[str, Any]) -> str:
    """A pack run's step counts: ``stepCounts`` where the gateway names them so (its detail then
    lists the ``steps``), else the counts in ``steps``."""
    counts = row.get("stepCounts", row.get("steps"))
    if isinstance(counts, dict):
        return f"{counts.get('succeeded', 0)}/{counts.get('total', 0)} ok, {counts.get('failed', 0)} failed"
    if isinstance(counts, list):
        ok = sum(1 for s in counts if s.get("status") == "succeeded")
        return f"{ok}/{len(counts)} ok"
    return text(counts)


COLUMNS: dict[str, list[Column]] = {
    "deadletter": [
        Column("entryId", "entryId", no_wrap=True),
        Column("status", "status"),
        Column("jobType", "jobType"),
        Column("errorCode", "errorCode"),
        Column("deadLetteredAt", when("deadLetteredAt"), no_wrap=True),
        Column("replays", "replayCount", justify="right"),
    ],
    "jobs": [
        Column("jobId", "jobId", no_wrap=True),
        Column("status", "status"),
        Column("jobType", "jobType"),
        Column("attempt", lambda r: f"{r.get('attempt')}/{r.get('maxAttempts')}", justify="right"),
        Column("createdAt", when("createdAt"), no_wrap=True),
        Column("lastErrorCode", "lastErrorCode"),
    ],
    "quotas": [
        Column("quotaId", "quotaId", no_wrap=True),
        Column("jobType", "jobType"),
        Column("maxActive", "maxActive", justify="right"),
        Column("maxPerHour", "maxPerHour", justify="right"),
        Column("paused", lambda r: f"yes ({r.get('pausedBy')})" if r.get("paused") else "no"),
        Column("pausedReason", "pausedReason", max_width=24),
    ],
    "packruns": [
        Column("packRunId", "packRunId", no_wrap=True),
        Column("packName", "packName"),
        Column("status", "status"),
        Column("steps", steps),
        Column("run", "operationRunId", justify="right"),
        Column("createdAt", when("createdAt"), no_wrap=True),
    ],
    "runs": [
        Column("id", "id", justify="right"),
        Column("type", "type"),
        Column("status", "status"),
        Column("outcome", "outcome"),
        Column("freshness", "freshness_state"),
        Column("createdAt", when("created_at"), no_wrap=True),
        Column("completedAt", when("completed_at"), no_wrap=True),
    ],
    "audit": [
        Column("auditId", "auditId", justify="right"),
        Column("occurredAt", when("occurredAt"), no_wrap=True),
        Column("action", "action"),
        Column("target", "target"),
        Column("subject", "subject"),
        Column("status", "resultStatus", justify="right"),
        Column("reason", "reason", max_width=30),
        Column("ticket", "ticket"),
    ],
    "outcomes": [
        Column("entryId", "entryId", no_wrap=True),
        Column("outcome", "outcome"),
        Column("reason", "reason"),
        Column("jobId", "jobId", no_wrap=True),
    ],
}


def stats(payload: dict[str, Any]) -> list[Any]:
    by_status = payload.get("byStatus") or {}
    totals = Table(title="Dead letters", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("total", "pending", "replaying", "replayed", "discarded", "last 24 h", "oldest pending"):
        totals.add_column(name, justify="right")
    totals.add_row(
        text(payload.get("total")),
        *(text(by_status.get(s, 0)) for s in ("pending", "replaying", "replayed", "discarded")),
        text(payload.get("inflowLast24h")),
        text(when("oldestPendingAt")(payload)),
    )
    categories = table(
        payload.get("byCategory") or [],
        [Column("category", "category"), Column("count", "count", justify="right"),
         Column("pending", "pending", justify="right")],
        title="By category",
    )
    clusters = table(
        payload.get("topClusters") or [],
        [
            Column("errorCode", "errorCode"),
            Column("count", "count", justify="right"),
            Column("pending", "pending", justify="right"),
            Column("template", "template", max_width=36),
            Column("lastSeen", when("lastSeen"), no_wrap=True),
            Column("a sample entry", lambda r: (r.get("sampleEntryIds") or [None])[0], no_wrap=True),
        ],
        title="Top error clusters",
    )
    return [totals, categories, clusters]


def preview(verb: str, criteria: dict[str, str], answer: dict[str, Any]) -> Group:
    """The dry run of an action by filter: how many match, how many would be acted on, a sample."""
    would = answer.get("wouldReplay", answer.get("wouldDiscard"))
    shown = ", ".join(f"{k}={v}" for k, v in criteria.items())
    head = Text.assemble(
        ("Dry run: ", "bold"),
        f"{answer.get('matched')} pending entries match {shown}; {would} would be {verb}ed.",
    )
    sample = answer.get("sample") or []
    if sample and isinstance(sample[0], dict):
        body: Any = table(sample, COLUMNS["deadletter"], title=f"Sample ({len(sample)})")
    elif sample:
        body = Text(f"Sample: {', '.join(map(str, sample))}")
    else:
        body = Text("")
    return Group(head, body)


def discard_result(answer: dict[str, Any]) -> Text:
    return Text(
        f"discarded {answer.get('discarded')} of {answer.get('matched')} matching entries "
        f"(run {answer.get('operationRunId')}, {answer.get('status')}: {answer.get('outcome')})"
    )


def pack_run(payload: dict[str, Any]) -> list[Any]:
    parts: list[Any] = [fields_table(payload, skip=("steps",) if isinstance(payload.get("steps"), list) else ())]
    step_rows = payload.get("steps")
    if isinstance(step_rows, list):
        parts.append(
            table(
                step_rows,
                [
                    Column("index", "index", justify="right"),
                    Column("jobType", "jobType"),
                    Column("jobId", "jobId", no_wrap=True),
                    Column("status", "status"),
                    Column("attempts", "attempts", justify="right"),
                    Column("lastErrorCode", "lastErrorCode"),
                    Column("lastErrorMessage", "lastErrorMessage", max_width=40),
                ],
                title="Steps",
            )
        )
    return parts
