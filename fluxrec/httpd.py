"""The stdlib HTTP server the daemons' small endpoints use, without the Nagle stall.

``http.server`` writes a response's headers and its body in two ``send`` calls; with
Nagle's algorithm on, the second waits for the client's (delayed) ACK of the first:
~40 ms per response on Linux. :class:`NoDelayHTTPServer` turns Nagle off on every
accepted socket (``TCP_NODELAY``) and :func:`respond` writes a whole response at once::

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            respond(self, 200, b"ok", "text/plain")

    srv = NoDelayHTTPServer(("127.0.0.1", 0), Handler)
"""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["NoDelayHTTPServer", "respond"]


class NoDelayHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose accepted sockets have ``TCP_NODELAY`` set."""

    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


def respond(
    handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "application/json"
) -> None:
    """Send a whole response (status line, headers, body) in one write."""
    reason = handler.responses.get(code, ("",))[0]
    head = (
        f"{handler.protocol_version} {code} {reason}\r\n"
        f"Server: {handler.version_string()}\r\n"
        f"Date: {handler.date_time_string()}\r\n"
        f"Content-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if handler.close_connection or handler.protocol_version < "HTTP/1.1":
        head += "Connection: close\r\n"
        handler.close_connection = True
    handler.wfile.write(head.encode("latin-1") + b"\r\n" + body)
    handler.log_request(code, len(body))
