"""An HTTP proxy in front of the live gateway that misbehaves on purpose: it drops the answer
to a request after the gateway acted on it (the network failing on the way back), or answers
503 itself for a while, and counts what passed."""

from __future__ import annotations

import json
import socket
import threading
import time
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
    strip: dict[str, str] = field(default_factory=dict)  # path prefix -> field removed from JSON answers
    feed_ids: list[int] = field(default_factory=list)  # serve /jobengine/events: these runs "change" often
    no_feed: bool = False  # answer /jobengine/events 404, as a gateway without the change feed
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: str
    plan: Plan
    lock: threading.Lock

    def log_message(self, format: str, *args: object) -> None:
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
        if self.path.startswith("/jobengine/events") and (self.plan.feed_ids or self.plan.no_feed):
            if self.plan.no_feed:
                payload = b'{"status":404,"code":"not_found","detail":"Not found.","title":"Not Found","type":"about:blank","traceId":"proxy"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/problem+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            else:
                self._feed()
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
        content = response.content
        removed = [name for prefix, name in self.plan.strip.items() if self.path.startswith(prefix)]
        dropped = {"content-encoding"}
        if removed and response.headers.get("content-type", "").startswith("application/json"):
            dropped.add("etag")  # the representation changed
            document = json.loads(content)
            for name in removed:
                document.pop(name, None)
            content = json.dumps(document).encode()
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in HOP_BY_HOP and name.lower() not in dropped:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _feed(self) -> None:
        """A change feed of its own (spec 10.2's format): each run of ``feed_ids`` changes every
        0.2 s, with a heartbeat comment first; the stream ends after 60 s."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(b": heartbeat\n\n")
            for sequence in range(1, 300):
                for run_id in self.plan.feed_ids:
                    data = json.dumps({"kind": "operation", "id": run_id, "version": sequence, "at": "now"})
                    self.wfile.write(f"id: {sequence}\nevent: operation.changed\ndata: {data}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

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
