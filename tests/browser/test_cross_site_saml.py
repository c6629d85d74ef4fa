"""A SAML login in real Chromium whose IdP is on another site than the broker, over plain http (development):
the browser binding cookie is SameSite=Lax there (None needs Secure, so https), and Chromium does not send it
with the IdP's cross-site POST. The ACS then posts the same form again from its own page (same-site: the
cookie goes along), and the login completes, checked against the browser that started it."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from broker.web.saml_sp import SAME_SITE_MARK
from tests.ops.conftest import REDIRECT_URI, authorize_url, begin_login, code_of, post_acs, setup_saml_tenant
from tests.support.broker_server import running_broker
from tests.support.saml_idp import running_saml_idp


def _login(page: Any, start: str) -> dict[str, list[str]]:
    """Sign in from `start`; the query the browser is sent to the app with (the app is not there: the request
    to it is read, not answered)."""
    from playwright.sync_api import Error

    with page.expect_request(lambda r: r.url.startswith(REDIRECT_URI), timeout=20_000) as sent:
        try:
            page.goto(start, wait_until="commit")  # the IdP page posts on by itself: no load to wait for
        except Error as exc:  # the chain of navigations ends at the app, which does not exist
            assert "ERR_NAME_NOT_RESOLVED" in str(exc) or "interrupted by another navigation" in str(exc), exc
    return parse_qs(urlsplit(sent.value.url).query)


def test_a_cross_site_idp_post_completes_the_login_over_plain_http(page: Any, tmp_path: Path) -> None:
    with running_saml_idp(host="localhost") as idp, running_broker(tmp_path) as broker:
        assert broker.url.startswith("http://127.0.0.1:") and idp.url.startswith("http://localhost:")
        tenant = setup_saml_tenant(broker, idp)
        query = _login(page, authorize_url(broker.url, tenant, "st-1"))
        assert query["state"] == ["st-1"] and query["code"], query
        assert '"acs_resubmitted_same_site"' in broker.log()
        # the same browser again, signing in anew at the IdP: bound to it just the same
        again = _login(page, authorize_url(broker.url, tenant, "st-2", prompt="login"))
        assert again["state"] == ["st-2"] and again["code"] != query["code"]


def test_without_the_cookie_the_second_post_is_still_refused(page: Any, tmp_path: Path) -> None:
    """The resubmission decides nothing: the IdP's answer to a login another browser began (here: a script
    holding that browser's cookie) posted by this browser, which has no cookie, is refused on the second POST,
    and the login stays with its own browser."""
    with running_saml_idp(host="localhost") as idp, running_broker(tmp_path) as broker:
        tenant = setup_saml_tenant(broker, idp)
        other = requests.Session()
        action, fields = begin_login(other, authorize_url(broker.url, tenant, "st-3"))
        inputs = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in fields.items())
        attacker = f"{idp.url}/post-elsewhere"
        page.route(attacker, lambda route: route.fulfill(status=200, headers={"Content-Type": "text/html"}, body=(
            f'<form method="post" action="{html.escape(action)}">{inputs}</form>'
            "<script>document.forms[0].submit()</script>")))
        with page.expect_response(lambda r: r.url == action and r.request.post_data is not None
                                  and SAME_SITE_MARK in r.request.post_data) as answered:
            page.goto(attacker)
        assert answered.value.status == 400
        page.wait_for_function("document.body && document.body.innerText.includes('another browser')")
        assert broker.log().count('"acs_resubmitted_same_site"') == 1
        # the browser that began the login still completes it
        assert code_of(post_acs(other, broker.url, action, fields))
