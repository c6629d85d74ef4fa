"""broker.logs.JsonFormatter: one JSON object per record, with the context's request id, tenant and connection."""

from __future__ import annotations

import json
import logging
import time
import uuid

from broker import logs


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "broker.test", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "something_happened", **extra})
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_time_is_utc_with_milliseconds_and_follows_each_second() -> None:
    formatter = logs.JsonFormatter()
    base = 1_764_633_599.0  # 2025-12-01T23:59:59Z
    times = [json.loads(formatter.format(_record(base + offset)))["time"]
             for offset in (0.125, 0.9375, 1.0, 1.5, 0.25, 86_400.0625)]  # binary fractions: exact milliseconds
    assert times == ["2025-12-01T23:59:59.125Z", "2025-12-01T23:59:59.937Z", "2025-12-02T00:00:00.000Z",
                     "2025-12-02T00:00:00.500Z", "2025-12-01T23:59:59.250Z", "2025-12-02T23:59:59.062Z"]
    for offset in (0.0, 0.5):  # the same as strftime of the record's own time
        created = time.time() + offset
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert json.loads(formatter.format(_record(created)))["time"].startswith(expected + ".")


def test_fields_context_and_values_json_cannot_hold() -> None:
    formatter = logs.JsonFormatter()
    token = logs.request_id.set("rid-1"), logs.tenant.set("acme"), logs.connection.set(None)
    try:
        ident = uuid.UUID(int=7)
        line = formatter.format(_record(1_764_633_600.5, code="saml_signature_invalid", ident=ident, n=3))
    finally:
        logs.request_id.reset(token[0])
        logs.tenant.reset(token[1])
        logs.connection.reset(token[2])
    assert "\n" not in line and " " not in line.replace("_", "")  # compact: no spaces after separators
    out = json.loads(line)
    assert out == {"time": "2025-12-02T00:00:00.500Z", "level": "info", "logger": "broker.test",
                   "event": "something_happened", "pid": out["pid"], "request_id": "rid-1", "tenant": "acme",
                   "code": "saml_signature_invalid", "ident": str(ident), "n": 3}
