"""Requests to the gateway with the envelope headers, bounded retries and problem+json errors.

Retries: a connection that fails or drops, 502/503/504, 429 and 409 ``idempotency_in_flight``
are retried with backoff (``Retry-After`` honoured, capped) at most :data:`ATTEMPTS` times in all.
Every action carries an ``Idempotency-Key`` made once per command invocation, so a retried
request (the first one's answer lost on the way back) is answered from the gateway's record of
the first one and never acts twice.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.ops.target import Target

ATTEMPTS = 5
BACKOFF_SECONDS = 0.5
MAX_WAIT_SECONDS = 10.0
RETRIED_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = "jobgate-ops"


class OpsError(Exception):
    exit_code = 1


class Refused(OpsError):
    """The gateway refused the request (4xx): exit 1."""

    exit_code = 1

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('code', '')}")
        self.status = status
        self.problem = problem


class Unreachable(OpsError):
    """No answer, or a 5xx, after the bounded retries: exit 3."""

    exit_code = 3

    def __init__(self, message: str, problem: dict[str, Any] | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem


@dataclass
class Action:
    """An operator action's headers. One key per command invocation; a command that sends
    several requests derives one key per request from it (``step``)."""

    reason: str
    ticket: str | None = None
    key: str = field(default_factory=lambda: f"ops-{secrets.token_hex(12)}")

    def headers(self, step: str | None = None) -> dict[str, str]:
        headers = {
            "X-Stella-Operator-Reason": self.reason,
            "Idempotency-Key": self.key if step is None else f"{self.key}-{step}",
        }
        if self.ticket:
            headers["X-Stella-Operator-Ticket"] = self.ticket
        return headers


def problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        return body
    return {
        "status": response.status_code,
        "code": f"http_{response.status_code}",
        "detail": (response.text or response.reason_phrase or "")[:500],
        "traceId": response.headers.get("x-stella-trace-id"),
    }


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Gateway:
    """One gateway, one tenant: every request carries the token, tenant and project headers."""

    def __init__(
        self,
        target: Target,
        *,
        log: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.target = target
        self._log = log
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {target.token}", "User-Agent": USER_AGENT}
        if target.tenant:
            headers["X-Stella-Tenant"] = target.tenant
        if target.project:
            headers["X-Stella-Project"] = target.project
        self.http = httpx.Client(
            base_url=target.url,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def log(self, line: str) -> None:
        if self._log is not None:
            self._log(line)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """The response (2xx, 304, or a status in ``accept``); a refusal raises :class:`Refused`,
        no answer or a 5xx after the retries :class:`Unreachable`."""
        shown = {k: v for k, v in (headers or {}).items()}  # never the Authorization header
        for attempt in range(1, ATTEMPTS + 1):
            self.log(f"-> {method} {path}{_query(params)} {_headers_text(shown)}".rstrip())
            started = time.monotonic()
            try:
                response = self.http.request(method, path, params=params, json=json, headers=headers)
            except httpx.TransportError as exc:
                self.log(f"<- no answer ({type(exc).__name__}) after {_ms(started)}")
                if attempt == ATTEMPTS:
                    raise Unreachable(
                        f"the gateway at {self.target.url} did not answer ({type(exc).__name__}) "
                        f"after {ATTEMPTS} attempts"
                    ) from None
                self._wait(attempt, None)
                continue
            trace = response.headers.get("x-stella-trace-id", "-")
            replayed = " (idempotent replay)" if response.headers.get("idempotent-replayed") else ""
            self.log(f"<- {response.status_code} in {_ms(started)}, traceId {trace}{replayed}")
            if response.is_success or response.status_code == 304 or response.status_code in accept:
                return response
            if self._retryable(response) and attempt < ATTEMPTS:
                self._wait(attempt, _retry_after(response))
                continue
            problem = problem_of(response)
            if response.status_code >= 500:
                raise Unreachable(
                    f"the gateway answered {response.status_code} after {attempt} attempt(s)",
                    problem,
                    response.status_code,
                )
            raise Refused(response.status_code, problem)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _retryable(response: httpx.Response) -> bool:
        if response.status_code in RETRIED_STATUSES:
            return True
        return response.status_code == 409 and problem_of(response).get("code") == "idempotency_in_flight"

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        backoff = BACKOFF_SECONDS * 2 ** (attempt - 1)
        seconds = min(MAX_WAIT_SECONDS, max(backoff, retry_after or 0.0))
        self.log(f"   retrying in {seconds:.1f} s (attempt {attempt + 1} of {ATTEMPTS})")
        self._sleep(seconds)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def get_if_changed(self, path: str, etag: str | None) -> tuple[Any, str | None] | None:
        """``(body, etag)``, or None when the gateway answers 304 to ``If-None-Match``."""
        response = self.request("GET", path, headers={"If-None-Match": etag} if etag else None)
        if response.status_code == 304:
            return None
        return response.json(), response.headers.get("etag")

    def act(
        self, path: str, action: Action, body: Any = None, *, step: str | None = None, method: str = "POST"
    ) -> httpx.Response:
        return self.request(method, path, json=body, headers=action.headers(step))

    def pages(
        self, path: str, params: Mapping[str, Any], *, items_key: str = "items", limit: int | None = None
    ) -> Listing:
        return Listing(self, path, dict(params), items_key, limit)


class Listing:
    """The items of a list route, pages fetched only as they are consumed. Each page asks for
    no more than is still wanted, so the listing stops on a page boundary and
    :attr:`continuation` resumes exactly after the last item given out."""

    PAGE = 200

    def __init__(self, gateway: Gateway, path: str, params: dict[str, Any], items_key: str, limit: int | None):
        self.gateway = gateway
        self.path = path
        self.params = params
        self.items_key = items_key
        self.limit = limit
        self.continuation: str | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        given = 0
        token: str | None = None
        while True:
            size = self.PAGE if self.limit is None else min(self.PAGE, self.limit - given)
            params = {**self.params, "limit": size}
            if token:
                params["continuationToken"] = token
            page = self.gateway.get(self.path, params)
            items = page.get(self.items_key) or []
            token = page.get("continuationToken")
            self.continuation = token
            for item in items:
                given += 1
                yield item
            if not token or (self.limit is not None and given >= self.limit):
                return


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    return "?" + str(httpx.QueryParams({k: v for k, v in params.items() if k != "continuationToken"}))


def _headers_text(headers: Mapping[str, str]) -> str:
    shown = [f"{k}: {v}" for k, v in headers.items() if k.lower() != "authorization"]
    return f"[{'; '.join(shown)}]" if shown else ""


def _ms(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.0f} ms"
