"""Structured logging: one JSON line per event with request id, tenant and connection from the context.

Secrets, assertions and tokens are never logged in full: use `fingerprint()` to refer to one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

request_id: ContextVar[str | None] = ContextVar("broker_request_id", default=None)
tenant: ContextVar[str | None] = ContextVar("broker_tenant", default=None)
connection: ContextVar[str | None] = ContextVar("broker_connection", default=None)

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def fingerprint(value: str | bytes) -> str:
    """A short, non-reversible reference to a secret value (for correlating log lines)."""
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()[:12]


# json.dumps with options builds a new encoder on each call; one, kept, encodes the same
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last whole second formatted, and its text

    def _time(self, created: float, msecs: float) -> str:
        whole = int(created)
        last = self._second  # read once: another thread may replace it
        if whole != last[0]:
            last = self._second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        return f"{last[1]}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        for key, var in (("request_id", request_id), ("tenant", tenant), ("connection", connection)):
            value = var.get()
            if value is not None:
                out[key] = value
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = record.exc_info[0].__name__
            out["traceback"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


# Libraries log at WARNING and above only, whatever BROKER_LOG_LEVEL says: at DEBUG some of them write what
# must never reach a log (authlib the issued tokens, SQLAlchemy each statement, urllib3 each URL with its
# query, saml2 whole messages), and the rest is noise next to the broker's own events.
QUIET_LIBRARIES = ("werkzeug", "saml2", "urllib3", "alembic", "authlib", "joserfc", "sqlalchemy", "psycopg",
                   "redis", "requests", "signxml", "xmlsec", "xmlschema")


def configure(level: str = "INFO") -> None:
    root = logging.getLogger()
    for noisy in QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # plain stream handlers (logging.basicConfig's) would print every event a second time, not as JSON; a
    # handler of another kind (a test's log capture, an operator's own) is left in place
    root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler] + [handler]
    root.setLevel(level)


def get(name: str) -> logging.Logger:
    return logging.getLogger(name)
