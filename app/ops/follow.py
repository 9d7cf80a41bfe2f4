"""Following an operation run to its end with a progress bar.

The change feed (``GET /jobengine/events?kinds=operation``) says when the run changed; a gateway
without it (404) is polled instead, each poll a conditional GET (``If-None-Match``) that costs a
304 while nothing changed. Either way the run's own detail is what is shown. Ctrl-C leaves the
run going: it only stops following (the caller prints how to cancel).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from app.ops.client import Gateway
from app.ops.render import Output

EVENTS = "/jobengine/events"
NO_FEED = frozenset({404, 405, 501})
# A quiet feed is reconnected (with Last-Event-ID) and the run read again after this long, so a
# change the feed did not carry is seen within seconds all the same.
FEED_QUIET_SECONDS = 5.0


def run_path(run_id: int | str) -> str:
    return f"/api/admin/operations/{run_id}"


@dataclass(frozen=True)
class Counts:
    """Where a run stands, from its ``summary_counts``: ``total`` is None when the run's type
    reports no total."""

    total: int | None
    done: int
    failed: int

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def remaining(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.processed)


def counts_of(run: dict[str, Any]) -> Counts:
    counts = {k: v for k, v in (run.get("summary_counts") or {}).items() if isinstance(v, int)}
    failed = counts.get("failed", 0) + counts.get("not_found", 0)
    done = sum(counts.get(k, 0) for k in ("replayed", "discarded", "skipped", "succeeded", "canceled", "reconciled"))
    total = counts.get("matched", counts.get("total"))
    return Counts(total, done, failed)


def finished(run: dict[str, Any]) -> bool:
    return run.get("status") == "completed"


def summary_line(run: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in (run.get("summary_counts") or {}).items())
    return f"run {run.get('id')} ({run.get('type')}) {run.get('status')}: {run.get('outcome')}" + (
        f" ({counts})" if counts else ""
    )


class Rate:
    """Items per second since following began, and the time left at that rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start: tuple[float, int] | None = None

    def observe(self, counts: Counts) -> tuple[float | None, float | None]:
        now = self.clock()
        if self.start is None:
            self.start = (now, counts.processed)
            return None, None
        elapsed = now - self.start[0]
        if elapsed <= 0:
            return None, None
        rate = (counts.processed - self.start[1]) / elapsed
        if rate <= 0 or counts.remaining is None:
            return rate, None
        return rate, counts.remaining / rate


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Follower:
    def __init__(
        self, gateway: Gateway, output: Output, run_id: int | str, *, poll_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gateway = gateway
        self.output = output
        self.run_id = run_id
        self.poll_seconds = poll_seconds
        self.sleep = sleep
        self.rate = Rate()
        self.mode = "feed"

    def follow(self) -> dict[str, Any]:
        """Show the run's progress until it completes; returns its final detail."""
        path = run_path(self.run_id)
        first = self.gateway.get_if_changed(path, None)
        assert first is not None
        run, etag = first
        progress = Progress(
            TextColumn("run {task.fields[run]}"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[done]} done, {task.fields[failed]} failed, {task.fields[remaining]} remaining"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.output.errors,
            transient=False,
        )
        with progress:
            task = progress.add_task("run", total=None, run=self.run_id, done=0, failed=0, remaining="?",
                                     rate="-/s", eta=_eta(None))
            self._show(progress, task, run)
            if not finished(run):
                for _ in self._changes():
                    got = self.gateway.get_if_changed(path, etag)
                    if got is not None:
                        run, etag = got
                        self._show(progress, task, run)
                    if finished(run):
                        break
        return run

    def _show(self, progress: Progress, task: Any, run: dict[str, Any]) -> None:
        counts = counts_of(run)
        rate, eta = self.rate.observe(counts)
        progress.update(
            task,
            total=counts.total,
            completed=counts.processed,
            done=counts.done,
            failed=counts.failed,
            remaining="?" if counts.remaining is None else counts.remaining,
            rate="-/s" if rate is None else f"{rate:.1f}/s",
            eta=_eta(0 if finished(run) else eta),
        )
        progress.refresh()

    # -- when to look again -----------------------------------------------------------------

    def _changes(self) -> Iterator[None]:
        """Yields whenever the run may have changed."""
        yield from self._feed()
        if self.mode == "poll":
            yield from self._poll()

    def _poll(self) -> Iterator[None]:
        while True:
            self.sleep(self.poll_seconds)
            yield

    def _feed(self) -> Iterator[None]:
        last_event_id: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            self.gateway.log(f"-> GET {EVENTS}?kinds=operation" + (f" [Last-Event-ID: {last_event_id}]" if last_event_id else ""))
            try:
                with connect_sse(
                    self.gateway.http,
                    "GET",
                    EVENTS,
                    params={"kinds": "operation"},
                    headers=headers,
                    timeout=httpx.Timeout(FEED_QUIET_SECONDS, connect=5.0),
                ) as source:
                    status = source.response.status_code
                    if status in NO_FEED or not source.response.is_success:
                        if status not in NO_FEED:
                            source.response.read()
                            self.gateway.log(f"<- {status} from the change feed: polling the run instead")
                        else:
                            self.gateway.log(f"<- {status}: this gateway has no change feed; polling the run instead")
                        self.mode = "poll"
                        return
                    self.gateway.log("<- 200 change feed connected")
                    failures = 0
                    yield  # (re)connected: whatever happened meanwhile is read again
                    looked = time.monotonic()
                    for event in source.iter_sse():
                        if event.id:
                            last_event_id = event.id
                        # others' events only: look again now and then all the same
                        overdue = time.monotonic() - looked >= FEED_QUIET_SECONDS
                        if event.event == "reset" or self._concerns_us(event.data) or overdue:
                            looked = time.monotonic()
                            yield
            except httpx.ReadTimeout:
                self.gateway.log("   change feed quiet; reading the run again")
                yield
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                self.gateway.log(f"   change feed interrupted ({type(exc).__name__}); reconnecting")
                if failures > 5:
                    self.mode = "poll"
                    return
                self.sleep(min(5.0, 0.5 * failures))
                yield

    def _concerns_us(self, data: str) -> bool:
        try:
            payload = json.loads(data)
        except ValueError:
            return False
        return isinstance(payload, dict) and str(payload.get("id")) == str(self.run_id)

