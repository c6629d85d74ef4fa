"""The services the web layer uses, as built by app.create_app and kept in app.extensions["broker"]."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from flask import Request, current_app, request

if TYPE_CHECKING:
    from broker.admin.service import AdminService
    from broker.audit import Auditor
    from broker.metrics import Metrics
    from broker.ports import Clock, ConfigStore, StateStore
    from broker.settings import Settings


@dataclass
class Services:
    settings: Settings
    config: ConfigStore
    state: StateStore
    clock: Clock
    auditor: Auditor
    admin: AdminService
    metrics: Metrics
    extras: dict[str, Any]


# The app's Services while it handles a request (set by its before_request hook, cleared at teardown). Each
# read through flask's current_app or request goes through werkzeug's LocalProxy, some ten thousand
# instructions, and a login's three requests made about a hundred such reads; a ContextVar read costs little.
_current: ContextVar[Services | None] = ContextVar("broker_services", default=None)


def services() -> Services:
    svc = _current.get()
    if svc is None:  # outside a request of the app (an app context of its own, a CLI command)
        svc = current_app.extensions["broker"]
    return svc


def bind_services(svc: Services | None) -> None:
    """Make `svc` what services() answers in this context, for the request that starts (None: it ended)."""
    _current.set(svc)


def current_request() -> Request:
    """The request object itself, for code that reads many of its attributes: one proxy lookup instead of
    one per attribute."""
    return cast(Request, request._get_current_object())  # type: ignore[attr-defined]
