"""The token endpoint, authorization_code grant: client auth, code binding, PKCE, one-time use."""

from __future__ import annotations

import hashlib
from base64 import urlsafe_b64encode
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.issuer.conftest import SECRET, SPECIAL_SECRET, Env, basic, pkce_pair


def body(resp: Any) -> dict[str, Any]:
    assert isinstance(resp.body, dict)
    return resp.body


def verify_id_token(
    env: Env, id_token: str, *, client_id: str = "conf", tenant: Any = None
) -> dict[str, Any]:
    """What an RP does: verify against the published JWKS with joserfc, then the claims."""
    tenant = tenant or env.tenant_a
    keys = KeySet.import_key_set(env.issuer.jwks(tenant))  # type: ignore[arg-type]
    token = jwt.decode(id_token, keys, algorithms=["RS256", "ES256"])
    JWTClaimsRegistry(
        now=int(env.clock.now()),
        iss={"essential": True, "value": env.issuer.issuer_url(tenant)},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
    ).validate(token.claims)
    return dict(token.claims)


def test_code_exchange_with_basic_and_form_urlencoded_special_secret(env: Env) -> None:
    code = env.code_for(env.authorize(client_id="special"))
    resp = env.exchange(code, client="special", secret=SPECIAL_SECRET)
    assert resp.status == 200, resp.body
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Pragma"] == "no-cache"
    t = body(resp)
    assert t["token_type"] == "Bearer" and t["expires_in"] == 600
    assert t["scope"] == "openid profile email groups offline_access"
    assert {"access_token", "id_token", "refresh_token"} <= set(t)


def test_basic_secret_is_decoded_as_form_urlencoded_not_raw(env: Env) -> None:
    code = env.code_for(env.authorize(client_id="special"))
    import base64

    raw = base64.b64encode(f"special:{SPECIAL_SECRET}".encode()).decode()  # not form-urlencoded
    resp = env.post("token", {"grant_type": "authorization_code", "code": code,
                              "redirect_uri": "https://app.example/cb"}, {"Authorization": f"Basic {raw}"})
    assert resp.status == 401 and body(resp)["error"] == "invalid_client"


def test_code_exchange_with_client_secret_post(env: Env) -> None:
    code = env.code_for(env.authorize(client_id="poster"))
    resp = env.exchange(code, client="poster", method="post")
    assert resp.status == 200, resp.body


def test_public_client_with_pkce(env: Env) -> None:
    verifier, challenge = pkce_pair()
    code = env.code_for(env.authorize_spa(challenge))
    resp = env.exchange(code, client="spa", method="none", code_verifier=verifier)
    assert resp.status == 200, resp.body


def test_confidential_client_with_pkce(env: Env) -> None:
    verifier, challenge = pkce_pair()
    code = env.code_for(env.authorize(code_challenge=challenge, code_challenge_method="S256"))
    assert env.exchange(code, code_verifier=verifier).status == 200


def test_id_token_verifies_against_the_jwks(env: Env) -> None:
    t = env.tokens()
    claims = verify_id_token(env, t["id_token"])
    assert claims["iss"] == "https://broker.test/t/acme"
    assert claims["aud"] == "conf" and claims["azp"] == "conf"
    assert claims["nonce"] == "n-1"
    assert claims["sub"] == "sub-123" and claims["sid"] == "sess-1"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["auth_time"] == int(env.clock.now() - 5)
    digest = hashlib.sha256(t["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert claims["amr"] == ["pwd", "mfa"] and claims["acr"].endswith("PasswordProtectedTransport")
    assert (claims["tenant"], claims["connection"], claims["idp"]) == ("acme", "okta", "http://www.okta.com/exk1")
    assert claims["email"] == "ada@acme.example" and claims["email_verified"] is True
    assert claims["name"] == "Ada Lovelace" and claims["given_name"] == "Ada"
    assert claims["groups"] == ["eng", "admins"] and claims["roles"] == ["admin"]
    assert claims["department"] == "R&D"


def test_id_token_claims_follow_scope(env: Env) -> None:
    claims = verify_id_token(env, env.tokens(scope="openid")["id_token"])
    assert {"tenant", "connection", "idp"} <= set(claims)
    assert not {"email", "name", "groups", "roles"} & set(claims)


def test_profile_extra_never_overrides_token_claims(env: Env) -> None:
    assert verify_id_token(env, env.tokens()["id_token"])["iss"] == "https://broker.test/t/acme"


def test_access_token_is_rfc9068(env: Env) -> None:
    t = env.tokens()
    keys = KeySet.import_key_set(env.issuer.jwks(env.tenant_a))  # type: ignore[arg-type]
    tok = jwt.decode(t["access_token"], keys, algorithms=["RS256"])
    assert tok.header["typ"] == "at+jwt" and tok.header["kid"] == env.keypool["rsa_a"].kid
    c = tok.claims
    assert c["iss"] == "https://broker.test/t/acme" and c["aud"] == "conf" and c["client_id"] == "conf"
    assert c["sub"] == "sub-123" and c["scope"] == t["scope"] and c["sid"] == "sess-1"
    assert c["exp"] - c["iat"] == 600 and c["jti"]


def test_no_id_token_without_openid_and_no_refresh_without_offline_access(env: Env) -> None:
    t = env.tokens(scope="profile email")
    assert "id_token" not in t and "refresh_token" not in t


def test_es256_app_gets_es256_tokens(env: Env) -> None:
    code = env.code_for(env.authorize(client_id="ec"))
    t = body(env.exchange(code, client="ec"))
    keys = KeySet.import_key_set(env.issuer.jwks(env.tenant_a))  # type: ignore[arg-type]
    tok = jwt.decode(t["id_token"], keys, algorithms=["ES256"])
    assert tok.header["alg"] == "ES256" and tok.header["kid"] == env.keypool["es_a"].kid
    assert verify_id_token(env, t["id_token"], client_id="ec")["at_hash"]
    assert env.userinfo(t["access_token"]).status == 200


def test_es256_app_without_an_es256_key_is_a_server_error(env: Env) -> None:
    env.config.keys[env.tenant_a.id] = env.config.keys[env.tenant_a.id][:1]
    code = env.code_for(env.authorize(client_id="ec"))
    resp = env.exchange(code, client="ec")
    assert resp.status == 500 and body(resp)["error"] == "server_error"
    assert env.audit.events[-1].reason == "server_error"


def test_code_reuse_fails_and_revokes_what_the_first_redemption_issued(env: Env) -> None:
    code = env.code_for(env.authorize())
    first = body(env.exchange(code))
    assert env.userinfo(first["access_token"]).status == 200
    second = env.exchange(code)
    assert second.status == 400 and body(second)["error"] == "invalid_grant"
    assert env.userinfo(first["access_token"]).status == 401
    assert not env.active(first["access_token"])
    assert not env.active(first["refresh_token"])
    assert body(env.refresh(first["refresh_token"]))["error"] == "invalid_grant"
    assert env.audit.events[-1].details.get("code_reuse") is not True  # the refresh attempt's event
    reuse = [e for e in env.audit.events if e.details.get("code_reuse")]
    assert reuse and reuse[0].outcome == "failure" and reuse[0].reason == "invalid_grant"


def test_code_presented_by_another_client(env: Env) -> None:
    code = env.code_for(env.authorize())
    resp = env.exchange(code, client="other")
    assert resp.status == 400 and body(resp)["error"] == "invalid_grant"
    # and the code is gone for the rightful client too (it was presented; it is spent)
    assert body(env.exchange(code))["error"] == "invalid_grant"


def test_code_of_another_tenant(env: Env) -> None:
    code = env.code_for(env.authorize())
    resp = env.exchange(code, tenant=env.tenant_b)  # same client_id and secret exist in tenant B
    assert resp.status == 400 and body(resp)["error"] == "invalid_grant"
    assert env.exchange(code).status == 200  # not spent by tenant B: still tenant A's to redeem


def test_code_stored_by_the_previous_version_still_redeems(env: Env) -> None:
    """Codes used to be kept under a key without the tenant; one issued by a replica of the previous version
    just before an upgrade is redeemed (once) by an upgraded one."""
    from broker.issuer.records import PREFIX, digest

    code = env.code_for(env.authorize())
    d = digest(code)
    tenant_id = env.tenant_a.id
    for kind in ("code", "code-grant"):
        raw = env.state.take(f"{PREFIX}{kind}:{tenant_id}:{d}")
        assert raw is not None
        env.state.put(f"{PREFIX}{kind}:{d}", raw, 60)
    first = env.exchange(code)
    assert first.status == 200, first.body
    assert body(env.exchange(code))["error"] == "invalid_grant"  # reuse still detected, and revokes
    assert env.userinfo(body(first)["access_token"]).status == 401


def test_redirect_uri_must_equal_the_authorized_one(env: Env) -> None:
    code = env.code_for(env.authorize())
    resp = env.exchange(code, redirect_uri="https://app.example/cb2?x=1&y=a%20b")
    assert body(resp)["error"] == "invalid_grant"


def test_wrong_verifier(env: Env) -> None:
    _, challenge = pkce_pair()
    other, _ = pkce_pair()
    code = env.code_for(env.authorize_spa(challenge))
    resp = env.exchange(code, client="spa", method="none", code_verifier=other)
    assert resp.status == 400 and body(resp)["error"] == "invalid_grant"


def test_missing_verifier(env: Env) -> None:
    _, challenge = pkce_pair()
    code = env.code_for(env.authorize(code_challenge=challenge, code_challenge_method="S256"))
    resp = env.exchange(code)
    assert resp.status == 400 and body(resp)["error"] == "invalid_request"


def test_verifier_without_challenge(env: Env) -> None:
    verifier, _ = pkce_pair()
    code = env.code_for(env.authorize())
    assert body(env.exchange(code, code_verifier=verifier))["error"] == "invalid_request"


def test_expired_code(env: Env) -> None:
    code = env.code_for(env.authorize())
    env.clock.advance(61)
    resp = env.exchange(code)
    assert resp.status == 400 and body(resp)["error"] == "invalid_grant"


def test_code_just_before_expiry(env: Env) -> None:
    code = env.code_for(env.authorize())
    env.clock.advance(59)
    assert env.exchange(code).status == 200


def test_unknown_code(env: Env) -> None:
    assert body(env.exchange("not-a-code"))["error"] == "invalid_grant"


def test_wrong_secret_with_basic_is_401_with_challenge(env: Env) -> None:
    code = env.code_for(env.authorize())
    resp = env.exchange(code, secret="wrong")
    assert resp.status == 401 and body(resp)["error"] == "invalid_client"
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    # says what can have gone wrong, not authlib's list of every method the endpoint knows
    assert "secret is wrong" in body(resp)["error_description"] and "[" not in body(resp)["error_description"]


def test_wrong_secret_with_post_is_400(env: Env) -> None:
    code = env.code_for(env.authorize(client_id="poster"))
    resp = env.exchange(code, client="poster", method="post", secret="wrong")
    assert resp.status == 400 and body(resp)["error"] == "invalid_client"
    assert "WWW-Authenticate" not in resp.headers


def test_a_confidential_app_may_send_its_secret_either_way(env: Env) -> None:
    """Registered for client_secret_basic, the secret in the body works too (and the other way round); the
    secret is checked the same, and a wrong one is refused either way."""
    code = env.code_for(env.authorize())
    assert env.exchange(code, method="post").status == 200
    code = env.code_for(env.authorize(client_id="poster"))
    assert env.exchange(code, client="poster", method="basic").status == 200
    code = env.code_for(env.authorize())
    assert body(env.exchange(code, method="post", secret="wrong-secret"))["error"] == "invalid_client"


def test_confidential_client_cannot_use_none(env: Env) -> None:
    verifier, challenge = pkce_pair()
    code = env.code_for(env.authorize(code_challenge=challenge, code_challenge_method="S256"))
    resp = env.exchange(code, method="none", code_verifier=verifier)
    assert body(resp)["error"] == "invalid_client"


def test_two_authentication_methods_are_refused(env: Env) -> None:
    code = env.code_for(env.authorize())
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://app.example/cb",
            "client_secret": "plain-secret-0123456789"}
    resp = env.post("token", form, basic("conf", "plain-secret-0123456789"))
    assert body(resp)["error"] == "invalid_request"


def test_body_client_id_must_match_basic(env: Env) -> None:
    code = env.code_for(env.authorize())
    assert body(env.exchange(code, client_id="other"))["error"] == "invalid_client"


def test_unsupported_grant_type_does_not_echo_input(env: Env) -> None:
    resp = env.post("token", {"grant_type": 'password"<x>'}, basic("conf", "plain-secret-0123456789"))
    assert resp.status == 400 and body(resp)["error"] == "unsupported_grant_type"
    assert "<x>" not in body(resp)["error_description"]


def test_missing_grant_type_is_invalid_request(env: Env) -> None:
    """RFC 6749 §5.2: a missing required parameter is invalid_request (unsupported_grant_type is for a grant
    type the server does not support)."""
    resp = env.post("token", {"code": "x"}, basic("conf", "plain-secret-0123456789"))
    assert resp.status == 400 and body(resp)["error"] == "invalid_request"
    assert "grant_type" in body(resp)["error_description"]


def test_get_is_refused(env: Env) -> None:
    from broker.issuer.server import HttpRequest

    resp = env.issuer.token(env.tenant_a, HttpRequest("GET", "https://broker.test/t/acme/token", {}, {}, {}))
    assert resp.status == 400


def test_audit_events_never_carry_token_values(env: Env) -> None:
    t = env.tokens()
    ok = env.audit.events[-1]
    assert (ok.type, ok.outcome, ok.app, ok.tenant) == ("token", "success", "conf", "acme")
    assert ok.details["grant_type"] == "authorization_code"
    text = repr(env.audit.events)
    for value in (t["access_token"], t["id_token"], t["refresh_token"]):
        assert value not in text


@pytest.mark.parametrize("secret", ["", "x"])
def test_failures_are_audited(env: Env, secret: str) -> None:
    env.exchange("nope", secret=secret)
    ev = env.audit.events[-1]
    assert ev.type == "token" and ev.outcome == "failure" and ev.reason in ("invalid_client", "invalid_grant")


def test_a_failed_basic_authentication_is_final_even_for_a_public_app(env: Env) -> None:
    """RFC 6749 §2.3, §5.2: wrong credentials in the header are invalid_client, never a fall-back to the
    client_id of the body (which would let a public app's requests through whatever the header said)."""
    verifier, challenge = pkce_pair()
    code = env.code_for(env.authorize_spa(challenge))
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://app.example/cb",
            "client_id": "spa", "code_verifier": verifier}
    resp = env.post("token", form, basic("spa", "wrong"))
    assert resp.status == 401 and body(resp)["error"] == "invalid_client"
    assert "WWW-Authenticate" in resp.headers
    assert env.post("token", form).status == 200  # the code was not used up by the refused request


@pytest.mark.parametrize("header", ["Basic !!!", "Basic " + "bm9jb2xvbg==", "Basic", "Bearer abc"])
def test_unreadable_or_other_authorization_never_falls_back_to_the_body(env: Env, header: str) -> None:
    """Basic credentials that cannot be read are failed credentials; any Authorization header next to a
    client_secret in the body is two methods at once (RFC 6749 §2.3)."""
    code = env.code_for(env.authorize())
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "https://app.example/cb",
            "client_id": "conf", "client_secret": SECRET}
    resp = env.post("token", form, {"Authorization": header})
    assert resp.status in (400, 401) and body(resp)["error"] in ("invalid_client", "invalid_request")
    if header.startswith("Basic") and header != "Basic":
        assert body(resp)["error"] == "invalid_client" and resp.status == 401
    assert env.exchange(code, method="post").status == 200  # nothing was consumed
