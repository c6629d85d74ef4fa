"""The services the web layer uses, as built by app.create_app and kept in app.extensions["broker"]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import current_app

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


def services() -> Services:
    svc: Services = current_app.extensions["broker"]
    return svc
