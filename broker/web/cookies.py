"""Browser cookies: the login binding (survives the IdP's cross-site POST) and the broker session.

Outside plain-http development the binding cookie is `SameSite=None; Secure`: a Lax cookie is not sent on
the IdP's cross-site POST to the ACS. The session cookie is `SameSite=Lax; HttpOnly` (Secure on https).

On https both carry the `__Host-` prefix (RFC 6265bis §4.1.3.2): the browser then accepts them only from this
host, Secure, for Path=/ and with no Domain, so a sibling subdomain (or a network attacker on a first plain
http visit) cannot plant a binding value of its own (login CSRF) or its own session (every later login in
that browser would be the attacker's). Path=/ means one session cookie per tenant: its name carries the slug.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from flask import Response

from broker.login import binding_digest
from broker.web.context import services

BINDING_COOKIE = "broker_login"
SESSION_COOKIE = "broker_session"
HOST_PREFIX = "__Host-"


def _secure() -> bool:
    return services().settings.secure_cookies


def binding_cookie_name(secure: bool) -> str:
    return HOST_PREFIX + BINDING_COOKIE if secure else BINDING_COOKIE


def session_cookie_name(tenant_slug: str, secure: bool) -> str:
    return f"{HOST_PREFIX}{SESSION_COOKIE}-{tenant_slug}" if secure else SESSION_COOKIE


def browser_binding(cookies: Mapping[str, str]) -> tuple[str, Callable[[Response], None]]:
    """The digest to store with a login transaction, and a function that sets the cookie on a response."""
    secure = _secure()
    name = binding_cookie_name(secure)
    value = cookies.get(name)
    fresh = not value or len(value) > 100
    if fresh:
        value = secrets.token_urlsafe(24)
    assert value is not None

    def set_cookie(resp: Response) -> None:
        if fresh:
            resp.set_cookie(name, value, httponly=True, secure=secure, path="/",
                            samesite="None" if secure else "Lax")

    return binding_digest(value), set_cookie


def binding_of(cookies: Mapping[str, str]) -> str | None:
    value = cookies.get(binding_cookie_name(_secure()))
    return binding_digest(value) if value and len(value) <= 100 else None


def session_id_of(cookies: Mapping[str, str], tenant_slug: str) -> str | None:
    return cookies.get(session_cookie_name(tenant_slug, _secure())) or None


def set_session_cookie(resp: Response, session_id: str, tenant_slug: str) -> None:
    secure = _secure()
    resp.set_cookie(session_cookie_name(tenant_slug, secure), session_id, httponly=True, secure=secure,
                    samesite="Lax", path="/" if secure else f"/t/{tenant_slug}/")


def clear_session_cookie(resp: Response, tenant_slug: str) -> None:
    secure = _secure()
    resp.delete_cookie(session_cookie_name(tenant_slug, secure), path="/" if secure else f"/t/{tenant_slug}/",
                       secure=secure, httponly=True, samesite="Lax")
