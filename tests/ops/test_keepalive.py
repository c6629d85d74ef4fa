"""`broker serve --keepalive`: an idle client connection stays open that long (a load balancer reusing its
upstream connections must find them open), on the real gunicorn server."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.support.broker_server import running_broker

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _answer(sock: socket.socket) -> bytes:
    """Send one request and read its whole response (headers, then Content-Length bytes of body)."""
    sock.sendall(REQUEST)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "the connection closed inside a response"
        body += chunk
    return data


def test_an_idle_connection_outlives_the_default_keepalive_when_configured_longer(tmp_path: Path) -> None:
    with running_broker(tmp_path, args=("--keepalive", "9")) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            time.sleep(6.5)  # longer than the default of 5 s
            second = _answer(sock)
        assert second.startswith(b"HTTP/1.1 200"), "the idle connection was closed before --keepalive ran out"
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            assert _answer(sock).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert sock.recv(1) == b"", "the server closes the connection once it has been idle too long"
            assert 7 < time.monotonic() - started < 12
