"""An HTTP proxy in front of the live gateway that misbehaves on purpose: it drops the answer
to a request after the gateway acted on it (the network failing on the way back), or answers
503 itself for a while, and counts what passed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length",
              "proxy-connection", "host"}


@dataclass
class Plan:
    drop_after_forwarding: dict[str, int] = field(default_factory=dict)  # "METHOD path" -> answers to drop
    unavailable: int = 0  # requests answered 503 (with Retry-After) before any is forwarded
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: str
    plan: Plan
    lock: threading.Lock

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        key = f"{self.command} {self.path.split('?')[0]}"
        with self.lock:
            self.plan.seen.append((self.command, self.path, dict(self.headers)))
            unavailable = self.plan.unavailable > 0
            if unavailable:
                self.plan.unavailable -= 1
        if unavailable:
            payload = b'{"status":503,"code":"unavailable","detail":"Try again.","title":"Service Unavailable","type":"about:blank","traceId":"proxy-503"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        response = httpx.request(self.command, self.upstream + self.path, headers=headers, content=body, timeout=60)
        with self.lock:
            drop = self.plan.drop_after_forwarding.get(key, 0) > 0
            if drop:
                self.plan.drop_after_forwarding[key] -= 1
        if drop:  # the gateway acted; its answer is lost on the way back
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-encoding":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.content)))
        self.end_headers()
        self.wfile.write(response.content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


@contextmanager
def proxy(upstream: str, plan: Plan) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"upstream": upstream, "plan": plan, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
