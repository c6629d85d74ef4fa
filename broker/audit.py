"""Audit events: who did what, with which outcome and reason code. Written to the store and the log."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from broker import logs
from broker.errors import ServiceUnavailable
from broker.model import AuditEvent, AuditType, Outcome
from broker.ports import AuditSink

log = logs.get("broker.audit")

_SECRET_KEYS = ("secret", "token", "assertion", "password", "key", "code")


def _scrub(details: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in details.items():
        if any(s in k.lower() for s in _SECRET_KEYS) and k not in ("key_id", "kid"):
            out[k] = "***"
        else:
            out[k] = v
    return out


class Auditor:
    """Builds AuditEvents and hands them to the sink; never raises into the request path on sink failure."""

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
            details=_scrub(details or {}),
        )
        log.info(
            "audit",
            extra={
                "audit_type": type,
                "outcome": outcome,
                "reason": reason,
                "audit_tenant": tenant,
                "audit_connection": connection,
                "app": app,
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

    def record(self, event: AuditEvent) -> None:
        """AuditSink protocol, so components can take an Auditor where a sink is expected."""
        try:
            self._sink.record(event)
        except Exception:  # noqa: BLE001
            log.exception("audit_write_failed", extra={"audit_id": event.id})


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
