"""Browser cookies: the login binding (survives the IdP's cross-site POST) and the broker session.

Outside plain-http development the binding cookie is `SameSite=None; Secure`: a Lax cookie is not sent on
the IdP's cross-site POST to the ACS. The session cookie is `SameSite=Lax; HttpOnly` (Secure on https).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from flask import Response

from broker.login import binding_digest
from broker.web.context import services

BINDING_COOKIE = "broker_login"
SESSION_COOKIE = "broker_session"


def _secure() -> bool:
    return services().settings.secure_cookies


def browser_binding(cookies: Mapping[str, str]) -> tuple[str, Callable[[Response], None]]:
    """The digest to store with a login transaction, and a function that sets the cookie on a response."""
    value = cookies.get(BINDING_COOKIE)
    fresh = not value or len(value) > 100
    if fresh:
        value = secrets.token_urlsafe(24)
    assert value is not None
    secure = _secure()

    def set_cookie(resp: Response) -> None:
        if fresh:
            resp.set_cookie(BINDING_COOKIE, value, httponly=True, secure=secure, path="/",
                            samesite="None" if secure else "Lax")

    return binding_digest(value), set_cookie


def binding_of(cookies: Mapping[str, str]) -> str | None:
    value = cookies.get(BINDING_COOKIE)
    return binding_digest(value) if value and len(value) <= 100 else None


def set_session_cookie(resp: Response, session_id: str, tenant_slug: str) -> None:
    resp.set_cookie(SESSION_COOKIE, session_id, httponly=True, secure=_secure(), samesite="Lax",
                    path=f"/t/{tenant_slug}/")


def clear_session_cookie(resp: Response, tenant_slug: str) -> None:
    resp.delete_cookie(SESSION_COOKIE, path=f"/t/{tenant_slug}/")
