"""One translation of BrokerError per surface: admin JSON, OAuth JSON, and HTML error pages.

Never a stack trace, never exception text from a library: only the error's code and safe message.
"""

from __future__ import annotations

import html
from typing import Any

from flask import Response, jsonify, request
from gunicorn.http import errors as gunicorn_errors

from broker import logs
from broker.errors import BrokerError

log = logs.get("broker.web")

# What gunicorn's body reader raises while the app reads a request body the client got wrong: a malformed
# chunk size or extension, a chunk without its CRLF, the client gone before the body ended. The client's
# fault, so a 400; they are neither HTTPExceptions nor BrokerErrors.
_UNREADABLE_BODY = tuple(
    cls for name in ("InvalidChunkSize", "InvalidChunkExtension", "ChunkMissingTerminator", "NoMoreData")
    if isinstance(cls := getattr(gunicorn_errors, name, None), type)
)


def unreadable_body(err: BaseException) -> bool:
    return isinstance(err, _UNREADABLE_BODY)


def admin_error(err: BrokerError) -> Response:
    body: dict[str, Any] = {"error": err.code, "message": err.message, "details": err.details}
    resp = jsonify(body)
    resp.status_code = err.status
    _admin_refused(err.status, err.code)
    return resp


def admin_error_raw(status: int, code: str, message: str) -> Response:
    resp = jsonify({"error": code, "message": message, "details": {}})
    resp.status_code = status
    _admin_refused(status, code)
    return resp


def _admin_refused(status: int, code: str) -> None:
    """Every refused admin API request is a log line: a wrong key tried from somewhere, a tenant key probing
    another tenant, a script stuck on 412s. Logged, not audited: refusals need no key and would let anyone
    fill the audit table. (5xx are logged where they happen, with their cause.)"""
    if status < 500:
        log.warning("admin_request_refused", extra={
            "status": status, "code": code, "method": request.method, "path": request.path[:200],
            "client": request.remote_addr})


def oauth_error(err: BrokerError, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify({"error": err.code, "error_description": err.message})
    resp.status_code = err.status
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}
code{{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}}</style></head>
<body><h1>{title}</h1><p>{message}</p>{extra}</body></html>"""


def html_page(
    status: int, title: str, message: str, code: str | None = None, request_id: str | None = None
) -> Response:
    extra = ""
    if code:
        extra += f"<p>Error code: <code>{html.escape(code)}</code></p>"
    if request_id:
        extra += f"<p><small>Request id: <code>{html.escape(request_id)}</code></small></p>"
    body = PAGE.format(title=html.escape(title), message=html.escape(message), extra=extra)
    resp = Response(body, status=status, mimetype="text/html")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return resp


def html_error(err: BrokerError, title: str = "Sign-in failed") -> Response:
    status = err.status if 400 <= err.status < 600 else 400
    if status >= 500:
        title = "Service temporarily unavailable"
    return html_page(status, title, err.message, err.code, logs.request_id.get())


def redirect_to(url: str) -> Response:
    """A 302 to `url` (as a flask Response, so every view returns one type)."""
    resp = Response(status=302)
    resp.headers["Location"] = url
    return resp
