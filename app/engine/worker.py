"""The worker: claims due jobs, runs their handlers, heartbeats, and runs the background steps.

One asyncio loop per process: a claim loop (``dispatcher.claim`` then ``outcomes.start``), one
task per running job, a heartbeat loop that extends every lease this worker holds in one
statement (and stops the jobs whose cancel was requested, or whose lease was lost) and renews the
worker's row in the workers registry (``app/domain/workers/registry.py``: registered at start,
marked gone at a graceful stop), an outcome loop that writes the ends of jobs finishing close
together in one batch (``_outcome_loop``), and one loop per background step (``app/engine/steps.py``).

Shutdown (SIGTERM/SIGINT, or the embedded gateway stopping): claiming stops at once; running
jobs get ``shutdown_grace_seconds`` to finish; the rest are stopped and their leases released
(back to ``pending``, the attempt not consumed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from app import metrics
from app.domain.workers import registry
from app.engine import dispatcher, outcomes
from app.engine.config import WorkerConfig
from app.engine.handlers import Handler, JobContext, JobFailure
from app.engine.steps import Step, background_steps
from app.storage.models import Tenant

if TYPE_CHECKING:
    from app.engine.context import EngineContext

log = logging.getLogger("jobgate.worker")

Key = tuple[int, str]


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class _Running:
    def __init__(self, job: JobContext, task: asyncio.Task[None]) -> None:
        self.job = job
        self.task = task
        self.stop_reason: str | None = None  # "cancel" | "lost" | "shutdown"


class Worker:
    def __init__(
        self,
        context: EngineContext,
        config: WorkerConfig,
        handlers: dict[str, Handler],
        *,
        worker_id: str | None = None,
        concurrency: int = 64,  # as `jobgate worker --concurrency`
        tenants: tuple[str, ...] = (),
        steps: list[Step] | None = None,
    ) -> None:
        self.context = context
        self.config = config
        self.handlers = handlers
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = max(1, concurrency)
        self.tenant_keys = tenants
        self.steps = background_steps() if steps is None else steps
        self.running: dict[Key, _Running] = {}
        self.executions: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self.completed = 0
        # Outcome writes share the process's connection pool with the claim, heartbeat and
        # background loops: bound them so no write waits past the pool timeout.
        self._writes = asyncio.Semaphore(8)
        self._ends: list[tuple[outcomes.Ending, asyncio.Future[None]]] = []
        self._ends_ready = asyncio.Event()

    # -- the loops

    async def run(self, stop: asyncio.Event | None = None) -> None:
        tenant_ids = await self._tenant_ids()
        self.identity = registry.Identity(
            self.worker_id, tuple(sorted(self.handlers)), tenant_ids, self.concurrency, self.config.heartbeat_seconds
        )
        try:
            async with self.context.sessions() as session:
                await registry.register(session, self.identity)
        except Exception:  # the heartbeat registers it again
            log.exception("could not register worker %s", self.worker_id)
        loops = [
            asyncio.create_task(self._claim_loop(tenant_ids)),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._outcome_loop()),
        ]
        loops += [asyncio.create_task(self._step_loop(step)) for step in self.steps]
        log.info("worker %s started (concurrency %d, %d job types)", self.worker_id, self.concurrency, len(self.handlers))
        try:
            if stop is not None:
                await stop.wait()
            else:
                await asyncio.Event().wait()
        finally:
            self.stopping.set()
            self._slot_freed.set()
            await self._drain()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            try:
                async with self.context.sessions() as session:
                    await registry.deregister(session, self.worker_id)
            except Exception:  # it counts as gone three heartbeats later anyway
                log.exception("could not deregister worker %s", self.worker_id)
            log.info("worker %s stopped", self.worker_id)

    async def _tenant_ids(self) -> tuple[int, ...] | None:
        if not self.tenant_keys:
            return None
        async with self.context.sessions() as session:
            rows = await session.execute(select(Tenant.id).where(Tenant.key.in_(self.tenant_keys)))
            return tuple(rows.scalars())

    async def _pause(self, seconds: float, event: asyncio.Event | None = None) -> None:
        waiters = [asyncio.ensure_future(self.stopping.wait())]
        if event is not None:
            waiters.append(asyncio.ensure_future(event.wait()))
        _, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    async def _claim_loop(self, tenant_ids: tuple[int, ...] | None) -> None:
        # Claim in batches: wait until half the slots (or the batch) are free, not one by one; but
        # a slot free for a whole poll interval is filled anyway, so that jobs still running (long
        # ones) never keep the queue waiting behind a threshold.
        threshold = max(1, min(self.config.batch, self.concurrency) // 2)
        loop = asyncio.get_running_loop()
        last_claim = loop.time()
        while not self.stopping.is_set():
            free = self.concurrency - len(self.running)
            claimed: list[JobContext] = []
            overdue = loop.time() - last_claim >= self.config.poll_seconds
            if free >= threshold or (free > 0 and (not self.running or overdue)):
                last_claim = loop.time()
                try:
                    claimed = await self.claim_once(min(free, self.config.batch), tenant_ids)
                except Exception:
                    log.exception("claim failed")
            if claimed and not self.stopping.is_set():
                continue
            self._slot_freed.clear()
            await self._pause(self.config.poll_seconds, self._slot_freed if free < threshold else None)

    async def claim_once(self, limit: int, tenant_ids: tuple[int, ...] | None = None) -> list[JobContext]:
        now = datetime.now(UTC)
        async with self.context.sessions() as session:
            claimed = await dispatcher.claim(
                session,
                worker_id=self.worker_id,
                job_types=self.handlers,
                limit=limit,
                lease_seconds=self.config.lease_seconds,
                now=now,
                tenants=tenant_ids,
            )
            if not claimed:
                return []
            runnable = await outcomes.start(session, self.worker_id, claimed, now)
        if self.stopping.is_set():
            async with self.context.sessions() as session:
                await outcomes.release(session, self.worker_id, runnable)
            return claimed
        for job in runnable:
            self._launch(job)
        return claimed

    def _launch(self, job: JobContext) -> None:
        # A handler may change its payload without changing the claimed job the worker keeps.
        handed = replace(job, payload=dict(job.payload or {}), claimed_at=datetime.now(UTC))
        handler_task = asyncio.create_task(self.handlers[job.job_type](handed))
        entry = _Running(job, handler_task)
        self.running[(job.tenant_id, job.job_id)] = entry
        execution = asyncio.create_task(self._finish(entry))
        self.executions.add(execution)
        execution.add_done_callback(self.executions.discard)

    async def _finish(self, entry: _Running) -> None:
        job = entry.job
        failure: JobFailure | None = None
        outcome = "succeeded"
        try:
            await entry.task
        except asyncio.CancelledError:
            outcome = entry.stop_reason or "shutdown"
        except JobFailure as exc:
            outcome, failure = "failed", exc
        except Exception as exc:  # noqa: BLE001 - a handler bug fails the attempt, not the worker
            outcome = "failed"
            failure = JobFailure("handler.error", "internal", f"{type(exc).__name__}: {exc}", retryable=True)
        metrics.WORKER_JOBS.labels(metrics.open_label("job_type", job.job_type), outcome).inc()
        try:
            await self._write_outcome(job, outcome, failure)
        except Exception:  # the lease expires and the job runs again
            log.exception("could not record the outcome of job %s", job.job_id)
        finally:
            self.running.pop((job.tenant_id, job.job_id), None)
            self.completed += 1
            self._slot_freed.set()

    async def _write_outcome(self, job: JobContext, outcome: str, failure: JobFailure | None) -> None:
        """Record the outcome, retrying with backoff for up to one lease.

        An outcome that is not written makes the job run again once its lease expires, so a brief
        database outage (a restart, a failover, a timed-out statement) is waited out instead. The
        heartbeat keeps the lease while the job is still listed as running, and every outcome
        statement is guarded by the lease owner and the status, so a retry after a write that did
        commit changes nothing.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.lease_seconds
        delay, batched = 0.1, True
        while True:
            try:
                if batched and outcomes.batchable(job, outcome, failure):
                    done: asyncio.Future[None] = loop.create_future()
                    self._ends.append((outcomes.Ending(job, outcome, failure), done))
                    self._ends_ready.set()
                    await done
                else:
                    async with self._writes:
                        await self._record(job, outcome, failure)
                return
            except Exception as exc:
                if loop.time() + delay > deadline:
                    raise
                log.warning(
                    "recording the outcome of job %s failed (%s); retrying in %.1f s", job.job_id, type(exc).__name__, delay
                )
            await asyncio.sleep(delay)
            delay, batched = min(delay * 2, 2.0), False  # a retry is written on its own

    async def _record(self, job: JobContext, outcome: str, failure: JobFailure | None) -> None:
        async with self.context.sessions() as session:
            if outcome == "succeeded":
                await outcomes.succeed(session, self.worker_id, job)
            elif outcome == "failed" and failure is not None:
                await outcomes.fail(
                    session,
                    self.worker_id,
                    job,
                    failure,
                    backoff_base=self.config.backoff_base_seconds,
                    backoff_max=self.config.backoff_max_seconds,
                )
            elif outcome == "cancel":
                await outcomes.cancel(session, self.worker_id, job)
            elif outcome == "shutdown":
                await outcomes.release(session, self.worker_id, [job])
            # "lost": another worker owns the job now; nothing to write

    async def _outcome_loop(self) -> None:
        """Records the ends of jobs in batches (``outcomes.end_many``: successes, retries,
        dead-letters and cancels of jobs outside pack runs and replays; one transaction, one
        guarded statement for the jobs); runs until cancelled after the drain.

        The first end of a batch waits ``outcome_window_seconds`` (5 ms) for the others that
        end close to it, unless a batch is already full, so jobs claimed together are written
        together. Until its batch is written a job holds its lease and counts as running (the
        heartbeat keeps it): a worker that dies meanwhile loses only those outcomes, and those
        jobs run again once their leases expire (at least once, never lost). A batch that fails
        hands its error to each of its jobs, which then write their end alone (``_write_outcome``)."""
        while True:
            await self._ends_ready.wait()
            if len(self._ends) < self.config.batch and not self.stopping.is_set():
                await asyncio.sleep(self.config.outcome_window_seconds)
            self._ends_ready.clear()
            batch, self._ends = self._ends, []
            if not batch:
                continue
            try:
                async with self._writes, self.context.sessions() as session:
                    await outcomes.end_many(
                        session,
                        self.worker_id,
                        [end for end, _ in batch],
                        backoff_base=self.config.backoff_base_seconds,
                        backoff_max=self.config.backoff_max_seconds,
                    )
            except Exception as exc:  # noqa: BLE001 - handed to every job of the batch
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _heartbeat_loop(self) -> None:
        # Runs until cancelled after the drain, so leases stay alive while running jobs finish.
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            try:
                async with self.context.sessions() as session:
                    await registry.beat(session, self.identity, len(self.running))
            except Exception:
                log.exception("worker heartbeat failed")
            entries = [e for e in self.running.values() if e.stop_reason is None]
            if not entries:
                continue
            try:
                async with self.context.sessions() as session:
                    held = await outcomes.heartbeat(
                        session, self.worker_id, [e.job for e in entries], self.config.lease_seconds
                    )
            except Exception:
                log.exception("heartbeat failed")
                continue
            for entry in entries:
                key = (entry.job.tenant_id, entry.job.job_id)
                if entry.task.done():
                    continue
                if key not in held:
                    entry.stop_reason = "lost"
                    entry.task.cancel()
                elif held[key]:
                    entry.stop_reason = "cancel"
                    entry.task.cancel()

    async def _step_loop(self, step: Step) -> None:
        while not self.stopping.is_set():
            try:
                await step.run(self.context)
            except Exception:
                log.exception("background step %s failed", step.name)
            await self._pause(step.interval_seconds)

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then stop them and release their leases."""
        if self.executions:
            await asyncio.wait(set(self.executions), timeout=self.config.shutdown_grace_seconds)
        for entry in list(self.running.values()):
            if not entry.task.done():
                entry.stop_reason = entry.stop_reason or "shutdown"
                entry.task.cancel()
        if self.executions:
            await asyncio.wait(set(self.executions), timeout=self.config.shutdown_grace_seconds + 5)
