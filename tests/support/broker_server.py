"""Run the real broker (`python -m broker serve`, gunicorn) on a free loopback port for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

BOOTSTRAP_KEY = "e2e-bootstrap-admin-key-0123456789"
SECRET_KEY = "e2e-secret-key-0123456789-abcdefghijklmnopq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class BrokerServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    admin: requests.Session = field(default_factory=requests.Session)

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        if body is not None:
            kw["json"] = body
        return self.admin.request(method, f"{self.url}/admin/v1{path}", timeout=30, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_broker(tmp: Path, *, port: int | None = None, workers: int = 1, env: dict[str, str] | None = None,
                   database_url: str | None = None, args: tuple[str, ...] = ()) -> Iterator[BrokerServer]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "DATABASE_URL", "REDIS_URL"))},
        "BROKER_PUBLIC_URL": url,
        "DATABASE_URL": database_url or f"sqlite:///{tmp / 'broker.db'}",
        "BROKER_SECRET_KEY": SECRET_KEY,
        "BROKER_BOOTSTRAP_ADMIN_KEY": BOOTSTRAP_KEY,
        "BROKER_ENV": "dev",
    }
    full_env.update(env or {})
    log_path = tmp / f"broker-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), *args],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = BrokerServer(url=url, port=port, process=proc, log_path=log_path)
    server.admin.headers["Authorization"] = f"Bearer {BOOTSTRAP_KEY}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"broker exited early:\n{server.log()}")
            try:
                if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker did not become ready:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        server.admin.close()
