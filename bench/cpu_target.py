"""A CPU-bound HTTP target on loopback for the decision benchmark: each request burns a fixed
amount of pure-Python work, scaled by ``?work=<factor>``, so a "slower build" is more server work,
not a sleep, and it competes for the same two cores as k6 (the noise is real).

    python bench/cpu_target.py --port 8099 [--base-ms 1.5]

Pure standard library. One process, threads serialised by the GIL like a busy single-worker service.
"""

from __future__ import annotations

import argparse
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def burn(iterations: int) -> int:
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) & 0xFFFF
    return x


def iterations_per_ms() -> float:
    """Measured once at start: how many loop iterations this machine does per millisecond."""
    burn(50_000)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        burn(100_000)
        best = min(best, time.perf_counter() - started)
    return 100_000 / (best * 1000)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on keep-alive responses
    base_iterations = 1

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass

    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        factor = float(query.get("work", ["1"])[0])
        body = str(burn(int(self.base_iterations * factor))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base-ms", type=float, default=1.5, help="server work per request at factor 1")
    args = parser.parse_args()
    Handler.base_iterations = int(iterations_per_ms() * args.base_ms)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{args.port}, {Handler.base_iterations} iterations per request", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
