"""Throwaway Redis and PostgreSQL servers on free loopback ports, for fault tests that stop and restart them.

The shared servers (CI's TEST_REDIS_URL / TEST_DATABASE_URL) are never touched: each helper starts its own
server process from the installed binaries, in a temporary directory, and removes it afterwards. `stop()`
and `start()` keep the same port and data, so a broker that lost its backend can be shown to recover.

PostgreSQL refuses to run as root: when the tests run as root, initdb/pg_ctl are run as the `postgres`
user through `runuser -u postgres --` (or `su postgres -c`), in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.broker_server import free_port


def _wait_port(port: int, *, up: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            is_up = s.connect_ex(("127.0.0.1", port)) == 0
        if is_up == up:
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not become {'reachable' if up else 'closed'} in {timeout}s")


# --- Redis ------------------------------------------------------------------------------------------------


def redis_binary() -> str | None:
    return shutil.which("redis-server")


@dataclass
class ThrowawayRedis:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(  # noqa: S603
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        _wait_port(self.port, up=False)


@contextmanager
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    workdir = Path(tempfile.mkdtemp(prefix="broker-redis-"))
    server = ThrowawayRedis(port=free_port(), workdir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- PostgreSQL -------------------------------------------------------------------------------------------


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL server binaries (initdb, pg_ctl)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    ctl = shutil.which("pg_ctl")
    return Path(ctl).parent if ctl else None


def _as_postgres(argv: Sequence[str]) -> list[str]:
    """Run as the `postgres` user when we are root (postgres refuses root), else as ourselves."""
    if os.geteuid() != 0:
        return list(argv)
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *argv]
    return ["su", "postgres", "-c", shlex.join(argv)]


def throwaway_pg_unavailable() -> str | None:
    """Why a throwaway PostgreSQL cannot be started here, or None."""
    if pg_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run a throwaway PostgreSQL as"
    return None


@dataclass
class ThrowawayPostgres:
    port: int
    workdir: Path
    bindir: Path

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        proc = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=timeout)  # noqa: S603
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.workdir} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.workdir / "pg.log"),
                  "-o", opts, "-w", "-t", "60", "start")
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "stop")
        _wait_port(self.port, up=False)

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()


@contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    bindir = pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries are not installed")
    workdir = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    if os.geteuid() == 0:
        shutil.chown(workdir, user="postgres", group="postgres")
    server = ThrowawayPostgres(port=free_port(), workdir=workdir, bindir=bindir)
    server.init()
    server.start()
    try:
        yield server
    finally:
        if server.running():
            try:
                server.stop()
            except RuntimeError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)
