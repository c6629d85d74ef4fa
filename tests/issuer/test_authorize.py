"""The authorization endpoint: request validation (RFC 6749 §4.1.1, RFC 7636, OIDC Core §3.1.2)."""

from __future__ import annotations

import pytest

from broker.issuer.server import AuthorizeError
from broker.model import AuthorizationRequest
from tests.issuer.conftest import Env, make_app, pkce_pair, query_of


def refused(env: Env, **params: str | None) -> AuthorizeError:
    with pytest.raises(AuthorizeError) as info:
        env.authorize(**params)  # type: ignore[arg-type]
    return info.value


def test_valid_request_is_parsed(env: Env) -> None:
    _, challenge = pkce_pair()
    req = env.authorize(code_challenge=challenge, code_challenge_method="S256", prompt="login consent",
                        max_age="300", login_hint="ada@acme.example")
    assert req == AuthorizationRequest(
        client_id="conf", redirect_uri="https://app.example/cb",
        scope=("openid", "profile", "email", "groups", "offline_access"), state="st-1", nonce="n-1",
        code_challenge=challenge, code_challenge_method="S256", prompt=("login", "consent"), max_age=300,
        login_hint="ada@acme.example",
    )


def test_plain_oauth_without_openid_is_allowed(env: Env) -> None:
    assert env.authorize(scope="profile").scope == ("profile",)


@pytest.mark.parametrize("client_id", [None, "nope"])
def test_unknown_or_missing_client_is_never_redirected(env: Env, client_id: str | None) -> None:
    err = refused(env, client_id=client_id)
    assert err.redirect_uri is None


def test_client_of_another_tenant_is_unknown(env: Env) -> None:
    with pytest.raises(AuthorizeError) as info:
        env.authorize(tenant=env.tenant_b, client_id="spa")
    assert info.value.redirect_uri is None


@pytest.mark.parametrize(
    "redirect_uri",
    [
        None,
        "https://app.example/cb/",  # trailing slash
        "https://app.example/cbx",  # prefix match
        "https://app.example/cb/extra",  # extra path
        "https://app.example:8443/cb",  # other port
        "https://app.example:443/cb",  # explicit default port: still not the same string
        "https://app.example/cb#frag",  # fragment
        "https://app.example/cb?x=1",  # extra query
        "http://app.example/cb",  # scheme
        "https://APP.example/cb",  # case
        "https://app.example.evil.com/cb",
        "https://app.example/cb2?x=1",  # registered one has more query
    ],
)
def test_redirect_uri_must_match_exactly_and_is_never_used_otherwise(
    env: Env, redirect_uri: str | None
) -> None:
    err = refused(env, redirect_uri=redirect_uri)
    assert err.code == "invalid_request"
    assert err.redirect_uri is None


def test_a_code_challenge_with_a_line_break_is_refused(env: Env) -> None:
    challenge = "a" * 43
    err = refused(env, code_challenge=challenge + "\n", code_challenge_method="S256")
    assert err.code == "invalid_request"
    assert env.authorize(code_challenge=challenge, code_challenge_method="S256").code_challenge == challenge


def test_a_state_too_long_to_echo_gets_an_error_page(env: Env) -> None:
    """A refusal that went back to the app would carry the state: a Location of megabytes breaks clients and
    proxies. So an over-long state is refused like an unknown client: no redirect."""
    err = refused(env, state="x" * 5000)
    assert err.code == "invalid_request" and err.redirect_uri is None
    assert "x" * 100 not in err.message


@pytest.mark.parametrize("state", ["a\x00b", "a\nb", "a\rb", "a\tb", "a\x7fb"])
def test_a_state_with_control_characters_gets_an_error_page(env: Env, state: str) -> None:
    """RFC 6749 A.5: state is visible characters. A form_post would come back rewritten (the app's check then
    fails), and a redirect would put them into the app's URL."""
    err = refused(env, state=state, response_mode="form_post")
    assert err.code == "invalid_request" and err.redirect_uri is None


def test_a_state_of_any_visible_text_is_kept(env: Env) -> None:
    assert env.authorize(state='s-\'"<>&é中😀 x%20+y').state == 's-\'"<>&é中😀 x%20+y'


def test_registered_redirect_uri_with_query_matches(env: Env) -> None:
    assert env.authorize(redirect_uri="https://app.example/cb2?x=1&y=a%20b").redirect_uri.endswith("a%20b")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),  # missing: malformed, not unsupported (§4.1.2.1)
        ({"scope": None}, "invalid_scope"),
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"scope": "openid OPENID"}, "invalid_scope"),
        ({"prompt": "none login"}, "invalid_request"),
        ({"prompt": "bogus"}, "invalid_request"),
        ({"max_age": "-1"}, "invalid_request"),
        ({"max_age": "1.5"}, "invalid_request"),
        ({"response_mode": "fragment"}, "invalid_request"),
        ({"request": "eyJ..."}, "request_not_supported"),
        ({"request_uri": "https://x"}, "request_uri_not_supported"),
        ({"nonce": "x" * 5000}, "invalid_request"),
    ],
)
def test_errors_after_the_redirect_uri_is_known_go_back_to_the_app(
    env: Env, params: dict[str, str | None], code: str
) -> None:
    err = refused(env, **params)
    assert err.code == code
    assert err.redirect_uri == "https://app.example/cb"


def test_scope_not_allowed_for_this_app(env: Env) -> None:
    err = refused(env, client_id="nooffline", scope="openid offline_access")
    assert err.code == "invalid_scope" and err.redirect_uri == "https://app.example/cb"


def test_plain_pkce_is_refused(env: Env) -> None:
    verifier, _ = pkce_pair()
    err = refused(env, code_challenge=verifier, code_challenge_method="plain")
    assert (err.code, err.redirect_uri) == ("invalid_request", "https://app.example/cb")


def test_challenge_without_method_is_refused(env: Env) -> None:
    _, challenge = pkce_pair()
    err = refused(env, code_challenge=challenge)
    assert err.code == "invalid_request"
    assert err.state == "st-1"


def test_method_without_challenge_is_refused(env: Env) -> None:
    assert refused(env, code_challenge_method="S256").code == "invalid_request"


def test_malformed_challenge_is_refused(env: Env) -> None:
    assert refused(env, code_challenge="short", code_challenge_method="S256").code == "invalid_request"


def test_public_client_without_pkce_is_refused(env: Env) -> None:
    err = refused(env, client_id="spa")
    assert (err.code, err.redirect_uri) == ("invalid_request", "https://app.example/cb")


def test_public_client_with_pkce_is_accepted(env: Env) -> None:
    _, challenge = pkce_pair()
    assert env.authorize_spa(challenge).client_id == "spa"


def test_authorization_response_carries_code_state_and_iss(env: Env) -> None:
    req = env.authorize()
    url = env.issuer.authorization_response(env.tenant_a, req, env.profile, auth_time=env.clock.now(),
                                            session_id="s").url
    assert url.startswith("https://app.example/cb?code=")
    q = query_of(url)
    assert q["state"] == "st-1"
    assert q["iss"] == "https://broker.test/t/acme"
    assert len(q["code"]) >= 43


def test_authorization_response_keeps_the_registered_query(env: Env) -> None:
    req = env.authorize(redirect_uri="https://app.example/cb2?x=1&y=a%20b", state="a b&c")
    url = env.issuer.authorization_response(env.tenant_a, req, env.profile, auth_time=env.clock.now(),
                                            session_id="s").url
    assert url.startswith("https://app.example/cb2?x=1&y=a%20b&code=")
    q = query_of(url)
    assert q["x"] == "1" and q["y"] == "a b" and q["state"] == "a b&c"


def test_authorization_response_rechecks_the_app(env: Env) -> None:
    req = env.authorize()
    del env.config.apps[(env.tenant_a.id, "conf")]
    with pytest.raises(AuthorizeError) as info:
        env.issuer.authorization_response(env.tenant_a, req, env.profile, auth_time=0, session_id="s")
    assert info.value.redirect_uri is None


def test_error_redirect(env: Env) -> None:
    req = env.authorize(state="xyz")
    url = env.issuer.error_answer(env.tenant_a, req, "access_denied", "The login was refused.").url
    assert url.startswith("https://app.example/cb?")
    assert query_of(url) == {"error": "access_denied", "error_description": "The login was refused.",
                             "state": "xyz", "iss": "https://broker.test/t/acme"}


def test_an_error_description_is_kept_to_the_characters_rfc_6749_allows_and_short(env: Env) -> None:
    req = env.authorize()
    echoed = 'no connection \'x"é Call +1-555-0100\\now\'' + "x" * 500
    url = env.issuer.error_answer(env.tenant_a, req, "access_denied", echoed).url
    description = query_of(url)["error_description"]
    assert len(description) <= 200 and description.endswith("...")
    assert all(0x20 <= ord(ch) <= 0x7E and ch not in '"\\' for ch in description), description
    assert description.startswith("no connection 'x?? Call +1-555-0100?now'")


def test_an_error_description_never_carries_markup_from_the_request(env: Env) -> None:
    """Many apps show error_description as it came: a request value in it must not become HTML there."""
    req = env.authorize()
    url = env.issuer.error_answer(env.tenant_a, req, "invalid_request",
                                  "This tenant has no connection '<img src=x onerror=alert(1)>'.").url
    description = query_of(url)["error_description"]
    assert "<" not in description and ">" not in description
    assert description == "This tenant has no connection '?img src=x onerror=alert(1)?'."


def test_form_post_response_mode_is_carried_and_answers_by_post(env: Env) -> None:
    """OAuth 2.0 Form Post Response Mode: the same parameters, POSTed to the redirect_uri as it is registered."""
    req = env.authorize(redirect_uri="https://app.example/cb2?x=1&y=a%20b", response_mode="form_post")
    assert req.response_mode == "form_post"
    answer = env.issuer.authorization_response(env.tenant_a, req, env.profile, auth_time=env.clock.now(),
                                               session_id="s")
    assert answer.form_post and answer.redirect_uri == "https://app.example/cb2?x=1&y=a%20b"
    params = dict(answer.params)
    assert set(params) == {"code", "state", "iss"} and params["state"] == "st-1"
    error = env.issuer.error_answer(env.tenant_a, req, "access_denied", "No.")
    assert error.form_post and dict(error.params)["error"] == "access_denied"
    assert not env.issuer.error_answer(env.tenant_a, env.authorize(response_mode="query"), "x", "y").form_post


def test_an_error_after_form_post_was_asked_for_goes_back_by_post(env: Env) -> None:
    err = refused(env, response_mode="form_post", prompt="bogus")
    assert (err.code, err.redirect_uri, err.form_post) == ("invalid_request", "https://app.example/cb", True)
    assert not refused(env, response_mode="fragment").form_post


def test_form_post_to_an_apps_custom_scheme_is_refused(env: Env) -> None:
    """A browser cannot POST to a native app's redirect (and the page's CSP allows web targets only)."""
    env.config.apps[(env.tenant_a.id, "native")] = make_app(
        env.tenant_a, "native", public=True, redirect_uris=("com.example.app:/cb",))
    _, challenge = pkce_pair()
    err = refused(env, client_id="native", redirect_uri="com.example.app:/cb", response_mode="form_post",
                  code_challenge=challenge, code_challenge_method="S256")
    assert (err.code, err.redirect_uri, err.form_post) == ("invalid_request", "com.example.app:/cb", False)
