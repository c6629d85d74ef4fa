"""Render a connector Step for the browser: a 302, or a self-submitting form (SAML HTTP-POST binding)."""

from __future__ import annotations

import base64
import hashlib
import html

from flask import Response

from broker.upstream.base import AutoPost, Redirect, Step
from broker.web.errors import redirect_to

SUBMIT = "document.forms[0].submit()"
# The page's one script, allowed by its hash: no other inline script (an injected one) would run.
SCRIPT_SRC = "'sha256-" + base64.b64encode(hashlib.sha256(SUBMIT.encode("ascii")).digest()).decode("ascii") + "'"

AUTOPOST = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signing in…</title></head>
<body>
<noscript><p>JavaScript is off: press Continue to go on signing in.</p></noscript>
<form method="post" action="{action}">{fields}<noscript><button type="submit">Continue</button></noscript></form>
<script>""" + SUBMIT + """</script>
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
        # `javascript:` or `data:` one, should one ever get past the metadata parser's Location check. Not the
        # target's origin: browsers apply form-action to the redirects after the POST too, and an IdP may send
        # the browser on to another host (Entra ID to a federated AD FS, say).
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src {SCRIPT_SRC}; form-action https: http:; frame-ancestors 'none'; "
            "base-uri 'none'"
        )
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"  # the form carries a SAML message: not its page's URL
        return resp
    raise TypeError(f"unknown step {step!r}")
