"""Audit events: who did what, with which outcome and reason code. Written to the store and the log."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from broker import logs
from broker.errors import ServiceUnavailable
from broker.model import AuditEvent, AuditType, Outcome
from broker.ports import AuditSink

log = logs.get("broker.audit")

_SECRET_WORDS = frozenset({"secret", "token", "assertion", "password", "key", "code", "cookie", "session"})
_IDENTIFIERS = frozenset({"key_id", "kid", "admin_key_id"})  # names of ids, not of secrets


def _scrub(details: Mapping[str, Any]) -> dict[str, Any]:
    """Mask any detail whose name says it may hold a secret (a word of it, split on _ - .), unless the value
    is a flag or a count (`code_reuse: true` says nothing secret) or the name is that of an identifier."""
    out: dict[str, Any] = {}
    for k, v in details.items():
        words = set(k.lower().replace("-", "_").replace(".", "_").split("_"))
        harmless = v is None or isinstance(v, bool | int | float)
        out[k] = "***" if words & _SECRET_WORDS and not harmless and k not in _IDENTIFIERS else v
    return out


class Auditor:
    """Builds AuditEvents and hands them to the sink; never raises into the request path on sink failure.
    Every event is also one `"event": "audit"` log line."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink

    def emit(
        self,
        type: AuditType,
        outcome: Outcome,
        *,
        tenant: str | None,
        connection: str | None = None,
        app: str | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        required: bool = False,
    ) -> AuditEvent:
        """Record an event. With `required`, a failed write raises ServiceUnavailable (a login that cannot
        be audited does not happen); otherwise the failure is logged and the caller goes on."""
        event = AuditEvent(
            id=str(uuid.uuid4()),
            time=datetime.now(UTC),
            type=type,
            tenant=tenant,
            connection=connection,
            app=app,
            outcome=outcome,
            reason=reason,
            details=details or {},
        )
        return self._store(event, required=required)

    def record(self, event: AuditEvent) -> None:
        """AuditSink protocol, so components can take an Auditor where a sink is expected (scrubbed and logged
        like every event)."""
        self._store(event, required=False)

    def _store(self, event: AuditEvent, *, required: bool) -> AuditEvent:
        """Scrub, log and store one event; returns it as stored. An event of a request carries its request id
        (details.request_id), so the audit API and the logs can be joined."""
        details = _scrub(event.details)
        rid = logs.request_id.get()
        if rid is not None:
            details.setdefault("request_id", rid)
        event = replace(event, details=details)
        log.info(
            "audit",
            extra={
                "audit_id": event.id,
                "details": details,
                "audit_type": event.type,
                "outcome": event.outcome,
                "reason": event.reason,
                "audit_tenant": event.tenant,
                "audit_connection": event.connection,
                "app": event.app,
            },
        )
        try:
            self._sink.record(event)
        except Exception as exc:  # noqa: BLE001 - auditing must not turn a refusal into a 500; logged loudly
            log.exception("audit_write_failed", extra={"audit_id": event.id})
            if required:
                raise ServiceUnavailable("The service is temporarily unavailable. Please try again shortly.",
                                         code="audit_unavailable", detail=exc.__class__.__name__) from None
        return event


def event_json(e: AuditEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "time": e.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "type": e.type,
        "tenant": e.tenant,
        "connection": e.connection,
        "app": e.app,
        "outcome": e.outcome,
        "reason": e.reason,
        "details": dict(e.details),
    }
