"""A small "wedding platform" API on loopback: the target of the demo and of the tests.

Pure standard library, no Django. Endpoints:

- ``GET  /api/guests``        the guest list (JSON)
- ``POST /api/rsvp``          answer an invitation (JSON body, 201)
- ``POST /api/photos``        upload a photo (any body, 201 with its size)
- ``GET  /healthz``           always fast, never fails
- ``GET|POST /_knobs``        read or set the knobs: ``{"latency_ms": 20, "jitter_ms": 2, "error_rate": 0.0}``

The knobs make a build slower or flakier without restarting anything, which is how the demo and
the tests inject a regression. ``python -m gates.loadtest.sample_target --port 8001 --latency-ms 20``.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GUESTS = [
    {"id": i, "name": name, "table": 1 + i % 8, "rsvp": i % 3 != 0}
    for i, name in enumerate(
        [
            "Ada",
            "Grace",
            "Alan",
            "Edsger",
            "Barbara",
            "Donald",
            "Margaret",
            "Ken",
            "Dennis",
            "Frances",
            "John",
            "Radia",
            "Tim",
            "Hedy",
            "Linus",
            "Guido",
        ]
    )
]


@dataclass
class Knobs:
    latency_ms: float = 20.0
    jitter_ms: float = 2.0
    error_rate: float = 0.0

    def delay_seconds(self) -> float:
        jitter = random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000.0


class SampleHandler(BaseHTTPRequestHandler):
    # Without this, delayed ACKs add ~40 ms to every keep-alive response and hide the latency
    # changes the tests inject.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server_version = "wedding-platform/1.0"

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _simulate(self) -> bool:
        """Apply the knobs; False when this request should fail."""
        knobs: Knobs = self.server.knobs
        time.sleep(knobs.delay_seconds())
        return not (knobs.error_rate and random.random() < knobs.error_rate)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self._send_json(200, {"ok": True})
        if path == "/_knobs":
            return self._send_json(200, asdict(self.server.knobs))
        if path == "/api/guests":
            if not self._simulate():
                return self._send_json(503, {"error": "injected failure"})
            return self._send_json(200, {"guests": GUESTS})
        return self._send_json(404, {"error": "not found"})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        body = self._read_body()
        if path == "/_knobs":
            try:
                changes = json.loads(body or b"{}")
                knobs = self.server.knobs
                for name in ("latency_ms", "jitter_ms", "error_rate"):
                    if name in changes:
                        setattr(knobs, name, float(changes[name]))
            except (ValueError, TypeError) as exc:
                return self._send_json(400, {"error": str(exc)})
            return self._send_json(200, asdict(self.server.knobs))
        if path == "/api/rsvp":
            if not self._simulate():
                return self._send_json(503, {"error": "injected failure"})
            try:
                answer = json.loads(body or b"{}")
            except ValueError:
                return self._send_json(400, {"error": "body must be JSON"})
            return self._send_json(
                201, {"guest": answer.get("guest"), "attending": bool(answer.get("attending"))}
            )
        if path == "/api/photos":
            if not self._simulate():
                return self._send_json(503, {"error": "injected failure"})
            return self._send_json(201, {"bytes": len(body)})
        return self._send_json(404, {"error": "not found"})


class SampleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], knobs: Knobs | None = None):
        super().__init__(address, SampleHandler)
        self.knobs = knobs or Knobs()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_in_thread(port: int = 0, **knobs) -> SampleServer:
    """Serve on 127.0.0.1 from a daemon thread; port 0 picks a free one. Call ``shutdown()``."""
    server = SampleServer(("127.0.0.1", port), Knobs(**knobs))
    threading.Thread(target=server.serve_forever, name="sample-target", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--jitter-ms", type=float, default=2.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = SampleServer(("127.0.0.1", args.port), Knobs(args.latency_ms, args.jitter_ms, args.error_rate))
    print(f"sample wedding platform API on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
