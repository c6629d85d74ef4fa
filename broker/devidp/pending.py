"""A sign-in waiting at the development IdP's login page, kept in the StateStore under a random handle.

The SAML SSO and OIDC authorize endpoints validate the incoming request, park what they will answer here,
and send the browser to the login page; the login form posts the handle back, which is taken exactly once.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from broker.ports import StateStore

PREFIX = "devidp:pending:"
TTL = 600


def park(state: StateStore, protocol: str, data: dict[str, Any]) -> str:
    handle = secrets.token_urlsafe(24)
    state.put(PREFIX + handle, json.dumps({"protocol": protocol, **data}).encode(), ttl=TTL)
    return handle


def peek(state: StateStore, handle: str | None) -> dict[str, Any] | None:
    if not handle or len(handle) > 100:
        return None
    raw = state.get(PREFIX + handle)
    return json.loads(raw) if raw is not None else None


def take(state: StateStore, handle: str | None) -> dict[str, Any] | None:
    if not handle or len(handle) > 100:
        return None
    raw = state.take(PREFIX + handle)
    return json.loads(raw) if raw is not None else None
