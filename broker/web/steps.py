"""Render a connector Step for the browser: a 302, or a self-submitting form (SAML HTTP-POST binding)."""

from __future__ import annotations

import html

from flask import Response

from broker.upstream.base import AutoPost, Redirect, Step
from broker.web.errors import redirect_to

AUTOPOST = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signing in…</title></head>
<body onload="document.forms[0].submit()">
<noscript><p>JavaScript is off: press Continue to go on signing in.</p></noscript>
<form method="post" action="{action}">{fields}<noscript><button type="submit">Continue</button></noscript></form>
</body></html>"""


def render_step(step: Step) -> Response:
    if isinstance(step, Redirect):
        return redirect_to(step.url)
    if isinstance(step, AutoPost):
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in step.fields.items()
        )
        resp = Response(AUTOPOST.format(action=html.escape(step.url), fields=fields), mimetype="text/html")
        resp.headers["Cache-Control"] = "no-store"
        # form-action names schemes, not `*`: the target is an IdP's (or our ACS's) web URL, never a
        # `javascript:` or `data:` one, should one ever get past the metadata parser's Location check.
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'unsafe-inline'; form-action https: http:; frame-ancestors 'none'; "
            "base-uri 'none'"
        )
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"  # the form carries a SAML message: not its page's URL
        return resp
    raise TypeError(f"unknown step {step!r}")
