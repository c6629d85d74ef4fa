"""Audit events: every one is stored and logged as one JSON line; details that may hold a secret are masked,
identifiers and flags are not (an audit trail must say which admin key acted, and that a code was reused)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

import pytest

from broker.audit import Auditor, _scrub
from broker.model import AuditEvent


class ListSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def test_scrub_masks_secret_values_and_keeps_ids_and_flags() -> None:
    out = _scrub({"client_secret": "s3cr3t", "id_token": "eyJ...", "refresh-token": "rt", "api.key": "k",
                  "code": "abc", "session": "cookie-value", "admin_key_id": "0b6c…", "key_id": "k1", "kid": "kid1",
                  "code_reuse": True, "refresh_reuse": True, "attempts": 3, "grant": "g-1", "endpoint": "token",
                  "keyboard": "not a key"})
    assert out == {"client_secret": "***", "id_token": "***", "refresh-token": "***", "api.key": "***",
                   "code": "***", "session": "***", "admin_key_id": "0b6c…", "key_id": "k1", "kid": "kid1",
                   "code_reuse": True, "refresh_reuse": True, "attempts": 3, "grant": "g-1",
                   "endpoint": "token", "keyboard": "not a key"}


def test_recorded_events_are_scrubbed_and_logged_like_emitted_ones(caplog: pytest.LogCaptureFixture) -> None:
    """The issuer hands finished token events to Auditor.record: they too are one log line each."""
    sink = ListSink()
    auditor = Auditor(sink)
    event = AuditEvent(id=str(uuid.uuid4()), time=datetime.now(UTC), type="token", tenant="acme",
                       connection="okta", app="portal", outcome="failure", reason="invalid_grant",
                       details={"endpoint": "token", "refresh_token": "rt-value", "refresh_reuse": True})
    with caplog.at_level(logging.INFO, logger="broker.audit"):
        auditor.record(event)
    assert sink.events[0].details == {"endpoint": "token", "refresh_token": "***", "refresh_reuse": True}
    lines = [r for r in caplog.records if r.getMessage() == "audit"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.audit_type, line.outcome, line.reason, line.audit_tenant) == ("token", "failure", "invalid_grant",
                                                                                "acme")
    assert "rt-value" not in json.dumps({k: str(v) for k, v in vars(line).items()})


def test_the_log_line_carries_the_event_id_and_details_and_the_event_its_request_id(
        caplog: pytest.LogCaptureFixture) -> None:
    """With the database down the log is the only record: it must say what the event said (a refresh token
    reused, which admin action), scrubbed like the stored copy; both name the request."""
    from broker import logs

    sink = ListSink()
    token = logs.request_id.set("req-42")
    try:
        with caplog.at_level(logging.INFO, logger="broker.audit"):
            stored = Auditor(sink).emit("token", "failure", tenant="acme", reason="invalid_grant",
                                        details={"refresh_reuse": True, "refresh_token": "rt-value"})
    finally:
        logs.request_id.reset(token)
    assert sink.events[0].details == {"refresh_reuse": True, "refresh_token": "***", "request_id": "req-42"}
    (line,) = [r for r in caplog.records if r.getMessage() == "audit"]
    assert line.audit_id == stored.id and line.details == sink.events[0].details
    Auditor(sink).emit("admin", "success", tenant=None, details={"action": "tenant.delete"})
    assert "request_id" not in sink.events[1].details, "outside a request there is none to name"
