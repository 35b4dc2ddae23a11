"""A tiny Prometheus endpoint (stdlib ``http.server``): ``GET /metrics`` -> text format.

Each response is one write on a socket with ``TCP_NODELAY`` (:mod:`fluxrec.httpd`), so a
scrape never waits for the client's delayed ACK.

srv = serve_metrics("127.0.0.1", 9464, render)   # render() -> str, called per request
...; srv.shutdown()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fluxrec.httpd import NoDelayHTTPServer, respond

__all__ = ["serve_metrics"]


def serve_metrics(host: str, port: int, render: Callable[[], str]) -> ThreadingHTTPServer:
    """Serve ``render()`` at ``/metrics`` on a daemon thread; returns the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                respond(self, 404, b"only /metrics\n", "text/plain")
                return
            respond(self, 200, render().encode(), "text/plain; version=0.0.4")

        def log_message(self, format: str, *args: object) -> None:
            return

    srv = NoDelayHTTPServer((host, port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True, name="metrics-http").start()
    return srv
