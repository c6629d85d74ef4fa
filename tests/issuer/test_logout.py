"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0)."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from broker.errors import OAuthError
from tests.issuer.conftest import Env, query_of


def test_logout_without_parameters_shows_our_page(env: Env) -> None:
    assert env.issuer.end_session(env.tenant_a, {}).target is None


def test_logout_with_hint_and_registered_uri_redirects_with_state(env: Env) -> None:
    hint = env.tokens()["id_token"]
    ending = env.issuer.end_session(env.tenant_a, {"id_token_hint": hint,
                                                   "post_logout_redirect_uri": "https://app.example/bye",
                                                   "state": "s 1"})
    url = ending.target
    assert url is not None and url.startswith("https://app.example/bye?")
    assert query_of(url) == {"state": "s 1"}
    assert ending.hint_sid == "sess-1"  # the sid the ID token carries
    assert env.issuer.end_session(env.tenant_a, {"client_id": "conf"}).hint_sid is None


def test_expired_hint_is_accepted(env: Env) -> None:
    hint = env.tokens()["id_token"]
    env.clock.advance(10 * 86400)
    url = env.issuer.end_session(env.tenant_a, {"id_token_hint": hint,
                                                "post_logout_redirect_uri": "https://app.example/bye"}).target
    assert url == "https://app.example/bye"


def test_logout_with_client_id(env: Env) -> None:
    assert env.issuer.end_session(env.tenant_a, {"client_id": "conf",
                                                 "post_logout_redirect_uri": "https://app.example/bye"}).target


@pytest.mark.parametrize("uri", ["https://app.example/bye/", "https://app.example/byex", "https://evil.example/"])
def test_unregistered_post_logout_redirect_uri(env: Env, uri: str) -> None:
    hint = env.tokens()["id_token"]
    with pytest.raises(OAuthError):
        env.issuer.end_session(env.tenant_a, {"id_token_hint": hint, "post_logout_redirect_uri": uri})


def test_redirect_without_client_is_refused(env: Env) -> None:
    with pytest.raises(OAuthError):
        env.issuer.end_session(env.tenant_a, {"post_logout_redirect_uri": "https://app.example/bye"})


def test_hint_of_another_tenant_is_refused(env: Env) -> None:
    hint = env.tokens()["id_token"]
    with pytest.raises(OAuthError):
        env.issuer.end_session(env.tenant_b, {"id_token_hint": hint})


def test_forged_hint_is_refused(env: Env) -> None:
    claims = dict(jwt.decode(env.tokens()["id_token"],
                             RSAKey.import_key(env.keypool["rsa_a"].public_jwk)).claims)
    forged = jwt.encode({"alg": "RS256", "kid": env.keypool["rsa_a"].kid}, claims,
                        RSAKey.import_key(env.keypool["foreign"].private_pem))
    with pytest.raises(OAuthError):
        env.issuer.end_session(env.tenant_a, {"id_token_hint": forged})


def test_client_id_must_match_the_hint(env: Env) -> None:
    hint = env.tokens()["id_token"]
    with pytest.raises(OAuthError):
        env.issuer.end_session(env.tenant_a, {"id_token_hint": hint, "client_id": "other",
                                              "post_logout_redirect_uri": "https://app.example/bye"})


def test_access_token_is_not_a_hint(env: Env) -> None:
    with pytest.raises(OAuthError):
        env.issuer.end_session(env.tenant_a, {"id_token_hint": env.tokens()["access_token"]})
