"""What `broker serve` adds to gunicorn: the worker class, and the shared metrics directory.

gunicorn's gthread worker touches its heartbeat file (os.utime) on every turn of its event loop, about
twice per request; the arbiter only checks it against `timeout` (30 s). Writing it at most once a second
keeps the same liveness guarantee for a few percent less CPU per request.

Metrics: see broker.metrics. prepare_metrics_dir() runs in the master before anything imports
prometheus_client; worker_exited() is gunicorn's child_exit hook.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
import time
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger
from gunicorn.workers.gthread import ThreadWorker as _GunicornThreadWorker

from broker.errors import ConfigError
from broker.logs import JsonFormatter

HEARTBEAT_EVERY = 1.0  # seconds; far below the arbiter's timeout


class JsonLogger(_GunicornLogger):  # type: ignore[misc]
    """gunicorn's own messages (a port already taken, a worker timeout, a worker that failed to boot) as JSON
    lines like every other line on stderr."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())


class ThreadWorker(_GunicornThreadWorker):  # type: ignore[misc]
    _last_heartbeat = float("-inf")

    def notify(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_EVERY:
            self._last_heartbeat = now
            super().notify()


METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir() -> str:
    """The directory the workers share their metrics through: PROMETHEUS_MULTIPROC_DIR when the operator set
    it (emptied of earlier runs' files), else a fresh one under the temporary directory (an in-memory
    emptyDir on Kubernetes), removed when the server exits."""
    path = os.environ.get(METRICS_ENV)
    if path:
        try:
            os.makedirs(path, exist_ok=True)
            for stale in glob.glob(os.path.join(path, "*.db")) + glob.glob(os.path.join(path, "broker_certs_*.jsonl")):
                os.remove(stale)  # broker_certs_*: the expiry sightings of earlier versions
            probe = tempfile.NamedTemporaryFile(dir=path)  # noqa: SIM115 - closed (and removed) just below
            probe.close()
        except OSError as exc:
            raise ConfigError(f"{METRICS_ENV}={path} is not a writable directory ({exc.strerror}).") from None
    else:
        path = tempfile.mkdtemp(prefix="broker-metrics-")
        master = os.getpid()

        def remove() -> None:
            if os.getpid() == master:  # not in a forked worker that exits
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(remove)
        os.environ[METRICS_ENV] = path
    return path


def worker_exited(server: Any, worker: Any) -> None:
    """gunicorn child_exit: drop the exited worker's live-gauge files (its counters stay, so totals never go
    backwards)."""
    from prometheus_client import multiprocess

    path = os.environ.get(METRICS_ENV)
    if path:
        multiprocess.mark_process_dead(worker.pid, path)  # type: ignore[no-untyped-call]
