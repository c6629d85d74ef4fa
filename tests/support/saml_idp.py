"""A small, independent SAML IdP served over real HTTP on 127.0.0.1, for end-to-end tests.

It receives AuthnRequests over HTTP-Redirect or HTTP-POST, parses them with pysaml2 (not the broker's
code), and answers with an auto-POST form carrying a Response signed with signxml (tests/samlxml/
idp_fixtures.py), for the request's ID, ACS URL and issuer. The "user" is chosen by the test beforehand.
"""

from __future__ import annotations

import base64
import html
import re
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from saml2 import samlp
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.samlxml.idp_fixtures import Idp, build_response, make_idp, to_post_binding
from tests.support.broker_server import free_port

MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"


@dataclass
class User:
    name_id: str = "alice@acme.test"
    attributes: Mapping[str, Sequence[str]] = field(default_factory=lambda: {
        "email": ["alice@acme.test"], "firstName": ["Alice"], "lastName": ["Liddell"],
        "groups": ["Everyone", "Admins"]})
    style: str = "okta"


@dataclass
class SamlIdp:
    idp: Idp
    url: str
    user: User = field(default_factory=User)
    requests_seen: list[samlp.AuthnRequest] = field(default_factory=list)
    response_overrides: dict[str, Any] = field(default_factory=dict)
    last_response: bytes | None = None

    @property
    def entity_id(self) -> str:
        return self.idp.entity_id

    @property
    def sso_url(self) -> str:
        return f"{self.url}/sso"

    def metadata_xml(self) -> str:
        body = "".join(line for line in self.idp.cert_pem.strip().splitlines() if "-----" not in line)
        return (
            f'<?xml version="1.0"?>\n<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="{DS}" '
            f'entityID="{html.escape(self.entity_id)}">'
            f'<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
            f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{body}'
            f"</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
            f"<md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>"
            f'<md:SingleSignOnService Binding="{REDIRECT}" Location="{self.sso_url}"/>'
            f'<md:SingleSignOnService Binding="{POST}" Location="{self.sso_url}"/>'
            f"</md:IDPSSODescriptor></md:EntityDescriptor>"
        )

    # -- the IdP's HTTP endpoint -------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path != "/sso":
            return Response("not found", status=404)
        if request.method == "GET":
            raw = base64.b64decode(request.args["SAMLRequest"])
            xml = zlib.decompress(raw, -15)
            relay = request.args.get("RelayState")
        else:
            xml = base64.b64decode(request.form["SAMLRequest"])
            relay = request.form.get("RelayState")
        authn = samlp.authn_request_from_string(xml.decode())
        if authn is None or not authn.id or not authn.assertion_consumer_service_url:
            return Response("bad AuthnRequest", status=400)
        self.requests_seen.append(authn)
        kwargs: dict[str, Any] = {
            "acs_url": authn.assertion_consumer_service_url,
            "audience": authn.issuer.text,
            "in_response_to": authn.id,
            "name_id": self.user.name_id,
            "attributes": self.user.attributes,
            "style": self.user.style,
        }
        kwargs.update(self.response_overrides)
        response = build_response(self.idp, **kwargs)
        self.last_response = response
        fields = {"SAMLResponse": to_post_binding(response)}
        if relay is not None:
            fields["RelayState"] = relay
        inputs = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in fields.items())
        page = (f'<html><body onload="document.forms[0].submit()"><form method="post" '
                f'action="{html.escape(str(kwargs["acs_url"]))}">{inputs}</form></body></html>')
        return Response(page, mimetype="text/html")


@contextmanager
def running_saml_idp(entity_id: str | None = None, host: str = "127.0.0.1") -> Iterator[SamlIdp]:
    """The IdP on 127.0.0.1; `host` is the name its URLs use (`localhost`: another site than 127.0.0.1)."""
    port = free_port()
    url = f"http://{host}:{port}"
    idp = SamlIdp(idp=make_idp(entity_id or f"{url}/metadata"), url=url)

    def wsgi(environ: Any, start_response: Any) -> Any:
        return idp.handle(Request(environ))(environ, start_response)

    server = make_server("127.0.0.1", port, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield idp
    finally:
        server.shutdown()
        thread.join(timeout=5)


FORM_RE = re.compile(r'<form[^>]*action="([^"]+)"', re.I)
INPUT_RE = re.compile(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', re.I)


def parse_autopost(page: str) -> tuple[str, dict[str, str]]:
    m = FORM_RE.search(page)
    assert m, page[:500]
    return html.unescape(m.group(1)), {html.unescape(k): html.unescape(v) for k, v in INPUT_RE.findall(page)}


def browser_login(session: requests.Session, authorize_url: str) -> requests.Response:
    """Act as the browser: authorize -> IdP (redirect or POST binding) -> ACS. Returns the ACS answer."""
    r = session.get(authorize_url, allow_redirects=False, timeout=30)
    if r.status_code == 302:
        r = session.get(r.headers["Location"], allow_redirects=False, timeout=30)
    elif r.status_code == 200 and "SAMLRequest" in r.text:
        action, fields = parse_autopost(r.text)
        r = session.post(action, data=fields, allow_redirects=False, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text[:500])
    action, fields = parse_autopost(r.text)
    return session.post(action, data=fields, allow_redirects=False, timeout=30)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
