"""Render a connector Step for the browser: a 302, or a self-submitting form (SAML HTTP-POST binding)."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from urllib.parse import urlsplit

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


# an origin as a CSP source expression may carry nothing else (no ';', no space): a registered redirect URI's
# origin is used only when it has this shape
_ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def render_step(step: Step, *, framed_by: str | None = None) -> Response:
    """`framed_by`: for an app's form_post answer, its redirect_uri, whose origin may show the page in a frame (an
    app's silent sign-in in a hidden iframe gets its answer there); otherwise no one may."""
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
        ancestors = "'none'"
        if framed_by is not None:
            parts = urlsplit(framed_by)
            origin = f"{parts.scheme}://{parts.netloc}"
            ancestors = origin if _ORIGIN_RE.fullmatch(origin) else ancestors
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src {SCRIPT_SRC}; form-action https: http:; frame-ancestors {ancestors}; "
            "base-uri 'none'"
        )
        if ancestors == "'none'":  # X-Frame-Options cannot name an origin: CSP alone says who may frame it
            resp.headers["X-Frame-Options"] = "DENY"
        # never the page's URL (an authorize request's, with its login_hint). An app's answer names the broker's
        # origin, so the POST carries `Origin: <broker>` rather than `null`: an app whose framework checks Origin
        # on POSTs can list the broker as trusted. The SAML forms send nothing.
        resp.headers["Referrer-Policy"] = "origin" if framed_by is not None else "no-referrer"
        return resp
    raise TypeError(f"unknown step {step!r}")
