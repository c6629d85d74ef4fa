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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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
        return json.dumps(out, default=str, separators=(",", ":"))


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
