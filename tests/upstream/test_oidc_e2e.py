"""OidcConnector end to end against an independent, certified OpenID Provider (node oidc-provider).

A requests.Session plays the browser: connector.begin() -> the OP's authorize URL -> login and consent
forms -> the redirect to our redirect_uri, whose query goes into connector.complete().
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from joserfc.jwk import RSAKey

from broker.errors import LoginError
from broker.model import Connection, LoginTransaction, MappingConfig
from broker.ports import SystemClock
from broker.upstream.base import BeginRequest, CallbackInput, Redirect
from broker.upstream.oidc import OidcConnector
from broker.upstream.oidc_discovery import OidcMetadataCache
from tests.support.oidc_op import DEFAULT_ACCOUNT, OidcOp, OpClient, make_fetcher, running_oidc_op
from tests.upstream.test_oidc import CountingStateStore

pytestmark = pytest.mark.slow

PUBLIC_URL = "http://127.0.0.1:8000"
SECRET = "s3cr+t/with:odd&chars= %"  # changed by RFC 6749 §2.3.1 form-urlencoding


def redirect_uri(slug: str) -> str:
    return f"{PUBLIC_URL}/t/acme/connections/{slug}/oidc/callback"


@pytest.fixture(scope="module")
def client_key() -> RSAKey:
    return RSAKey.generate_key(2048)


@pytest.fixture(scope="module")
def op(client_key: RSAKey) -> Iterator[OidcOp]:
    public = client_key.as_dict(private=False)
    public["kid"] = client_key.thumbprint()
    clients = [
        OpClient("rp-basic", (redirect_uri("basic"),), SECRET, "client_secret_basic"),
        OpClient(
            "rp-post",
            (redirect_uri("post"),),
            SECRET,
            "client_secret_post",
            id_token_signed_response_alg="ES256",
        ),
        OpClient("rp-jwt", (redirect_uri("jwt"),), None, "private_key_jwt", jwks={"keys": [public]}),
    ]
    with running_oidc_op(clients) as running:
        yield running


def connector_for(op: OidcOp, slug: str, client_key: RSAKey | None = None, **settings: Any) -> OidcConnector:
    client = op.clients[f"rp-{slug}"]
    raw: dict[str, Any] = {
        "issuer": op.issuer,
        "client_id": client.client_id,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "scopes": ["openid", "email", "profile", "groups"],
    }
    if client.client_secret is not None:
        raw["client_secret"] = client.client_secret
    raw.update(settings)
    when = datetime(2026, 1, 1, tzinfo=UTC)
    connection = Connection(
        id=f"conn-{slug}",
        tenant_id="ten-1",
        tenant_slug="acme",
        slug=slug,
        protocol="oidc",
        domains=(),
        restrict_to_domains=False,
        mapping=MappingConfig(preset="generic-oidc"),
        settings=raw,
        enabled=True,
        version=1,
        created_at=when,
        updated_at=when,
    )
    clock = SystemClock()
    return OidcConnector(
        connection,
        public_url=PUBLIC_URL,
        fetcher=make_fetcher(),
        state=CountingStateStore(clock),
        clock=clock,
        private_key_jwt_key=client_key.as_pem(private=True) if client_key is not None else None,
        cache=OidcMetadataCache(),
    )


def start(connector: OidcConnector, txn_id: str, **request: Any) -> tuple[str, LoginTransaction]:
    result = connector.begin(BeginRequest(txn_id=txn_id, **request))
    assert isinstance(result.step, Redirect)
    txn = LoginTransaction(
        id=txn_id,
        tenant_id="ten-1",
        tenant_slug="acme",
        connection_id=connector.connection.id,
        connection_slug=connector.connection.slug,
        request=None,
        upstream=dict(result.remember),
        browser_binding="b",
        created_at=0.0,
        expires_at=0.0,
    )
    return result.step.url, txn


def callback_of(url: str, connector: OidcConnector) -> CallbackInput:
    assert url.startswith(connector.redirect_uri + "?"), url
    return CallbackInput(method="GET", params=dict(parse_qsl(urlsplit(url).query)), url=url)


@pytest.mark.parametrize("slug", ["basic", "post", "jwt"])
def test_login_against_a_certified_op(op: OidcOp, client_key: RSAKey, slug: str) -> None:
    connector = connector_for(op, slug, client_key if slug == "jwt" else None)
    url, txn = start(connector, f"txn-{slug}", login_hint="alice@example.com")
    browser = requests.Session()
    callback = callback_of(op.login(browser, url), connector)
    assert callback.params["iss"] == op.issuer  # RFC 9207, advertised by the OP and checked by us

    identity = connector.complete(callback, txn)

    assert identity.protocol == "oidc"
    assert identity.issuer == op.issuer
    assert identity.subject == DEFAULT_ACCOUNT.login
    # The code-flow ID token carries only sub & co: these came from userinfo.
    assert identity.attributes["email"] == ("alice@example.com",)
    assert identity.attributes["email_verified"] == ("true",)
    assert identity.attributes["name"] == ("Alice Liddell",)
    assert identity.attributes["groups"] == ("engineering", "admins")
    assert identity.amr == ("pwd",)
    assert identity.authn_context == "urn:test:loa:1"
    assert identity.authn_instant is not None


def test_code_cannot_be_redeemed_twice(op: OidcOp) -> None:
    connector = connector_for(op, "basic")
    url, txn = start(connector, "txn-replay")
    callback = callback_of(op.login(requests.Session(), url), connector)
    connector.complete(callback, txn)
    with pytest.raises(LoginError) as caught:
        connector.complete(callback, txn)
    assert caught.value.code == "oidc_token_exchange_failed"


def test_user_cancels_at_the_op(op: OidcOp) -> None:
    connector = connector_for(op, "basic")
    url, txn = start(connector, "txn-abort")
    callback = callback_of(op.login(requests.Session(), url, abort=True), connector)
    with pytest.raises(LoginError) as caught:
        connector.complete(callback, txn)
    assert caught.value.code == "oidc_upstream_error"
    assert "access_denied" in caught.value.message


def test_answer_for_another_login_is_refused(op: OidcOp) -> None:
    connector = connector_for(op, "basic")
    url, _ = start(connector, "txn-victim")
    _, other_txn = start(connector, "txn-attacker")
    callback = callback_of(op.login(requests.Session(), url), connector)
    with pytest.raises(LoginError) as caught:
        connector.complete(callback, other_txn)
    assert caught.value.code == "oidc_state_mismatch"


def test_wrong_client_secret_is_refused_by_the_op(op: OidcOp) -> None:
    connector = connector_for(op, "basic", client_secret="not-the-secret")
    url, txn = start(connector, "txn-badsecret")
    callback = callback_of(op.login(requests.Session(), url), connector)
    with pytest.raises(LoginError) as caught:
        connector.complete(callback, txn)
    assert caught.value.code == "oidc_token_exchange_failed"
    assert "invalid_client" in caught.value.message


def test_force_authn_asks_the_op_to_log_in_again(op: OidcOp) -> None:
    connector = connector_for(op, "basic")
    browser = requests.Session()
    url, txn = start(connector, "txn-first")
    connector.complete(callback_of(op.login(browser, url), connector), txn)
    url, txn = start(connector, "txn-again", force_authn=True)
    first = browser.get(url, allow_redirects=False, timeout=10)
    assert first.is_redirect and "/interaction/" in first.headers["Location"]  # login prompt again
    connector.complete(callback_of(op.login(browser, url), connector), txn)
