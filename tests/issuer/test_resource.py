"""userinfo, introspection, revocation, and the attacks on access tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from broker.issuer.server import HttpRequest
from tests.issuer.conftest import SECRET, Env, basic, signing_key


def body(resp: Any) -> dict[str, Any]:
    assert isinstance(resp.body, dict)
    return resp.body


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged_claims(env: Env, at: str) -> dict[str, Any]:
    return dict(jwt.decode(at, RSAKey.import_key(env.keypool["rsa_a"].public_jwk)).claims)


# --- userinfo ----------------------------------------------------------------------------------


def test_userinfo_claims_follow_the_token_scope(env: Env) -> None:
    full = body(env.userinfo(env.tokens()["access_token"]))
    assert full["sub"] == "sub-123" and full["email"] == "ada@acme.example"
    assert full["groups"] == ["eng", "admins"]
    assert (full["tenant"], full["connection"], full["idp"]) == ("acme", "okta", "http://www.okta.com/exk1")
    small = body(env.userinfo(env.tokens(scope="openid email")["access_token"]))
    assert "email" in small and "name" not in small and "groups" not in small


def test_userinfo_needs_openid_scope(env: Env) -> None:
    resp = env.userinfo(env.tokens(scope="profile")["access_token"])
    assert resp.status == 403 and body(resp)["error"] == "insufficient_scope"


def test_userinfo_accepts_a_form_token_on_post(env: Env) -> None:
    at = env.tokens()["access_token"]
    req = HttpRequest("POST", "https://broker.test/t/acme/userinfo", {}, {}, {"access_token": at})
    assert env.issuer.userinfo(env.tenant_a, req).status == 200


def test_userinfo_without_a_token(env: Env) -> None:
    req = HttpRequest("GET", "https://broker.test/t/acme/userinfo", {}, {}, {})
    resp = env.issuer.userinfo(env.tenant_a, req)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer ")


def test_expired_access_token(env: Env) -> None:
    at = env.tokens()["access_token"]
    env.clock.advance(600)
    assert env.userinfo(at).status == 401
    assert not env.active(at)


def test_a_replica_whose_clock_is_a_little_behind_accepts_a_fresh_token(env: Env) -> None:
    """iat/nbf from another replica's clock may be up to a minute ahead of this one's; exp has no leeway."""
    at = env.tokens()["access_token"]
    exp = forged_claims(env, at)["exp"]
    env.clock.advance(-30)  # this replica is 30 s behind the one that issued the token
    assert env.userinfo(at).status == 200 and env.active(at)
    env.clock.advance(-40)  # 70 s behind: "issued in the future" beyond any clock difference
    assert env.userinfo(at).status == 401 and not env.active(at)
    env.clock.t = exp - 1
    assert env.userinfo(at).status == 200
    env.clock.t = exp
    assert env.userinfo(at).status == 401 and not env.active(at)


# --- attacks -----------------------------------------------------------------------------------


def test_tokens_of_tenant_a_are_rejected_by_tenant_b(env: Env) -> None:
    t = env.tokens()
    assert env.userinfo(t["access_token"], tenant=env.tenant_b).status == 401
    assert env.active(t["access_token"]) is True
    assert env.active(t["access_token"], tenant=env.tenant_b) is False
    assert env.active(t["refresh_token"], tenant=env.tenant_b) is False
    resp = env.post("revoke", {"token": t["access_token"]}, basic("conf", SECRET), tenant=env.tenant_b)
    assert resp.status == 200
    assert env.userinfo(t["access_token"]).status == 200  # tenant B could not revoke it


def test_tenant_b_rejects_a_token_even_when_it_publishes_tenant_a_key(env: Env) -> None:
    """Keys shared by mistake still do not let tokens cross: iss must be this tenant's issuer."""
    env.config.keys[env.tenant_b.id].append(signing_key(env.keypool["rsa_a"], env.tenant_b.id, active=False))
    at = env.tokens()["access_token"]
    assert env.userinfo(at, tenant=env.tenant_b).status == 401
    assert not env.active(at, tenant=env.tenant_b)


def test_alg_none_is_rejected(env: Env) -> None:
    claims = forged_claims(env, env.tokens()["access_token"])
    for header in ({"alg": "none", "typ": "at+jwt"},
                   {"alg": "none", "typ": "at+jwt", "kid": env.keypool["rsa_a"].kid}):
        token = f"{b64(header)}.{b64(claims)}."
        assert env.userinfo(token).status == 401
        assert not env.active(token)


def test_foreign_key_signature_is_rejected(env: Env) -> None:
    claims = forged_claims(env, env.tokens()["access_token"])
    foreign = RSAKey.import_key(env.keypool["foreign"].private_pem)
    for kid in (env.keypool["foreign"].kid, env.keypool["rsa_a"].kid):
        token = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": kid}, claims, foreign)
        assert env.userinfo(token).status == 401
        assert not env.active(token)


def test_hs256_with_the_public_key_as_secret_is_rejected(env: Env) -> None:
    claims = forged_claims(env, env.tokens()["access_token"])
    pem = RSAKey.import_key(env.keypool["rsa_a"].public_jwk).as_pem(private=False)
    jwk_json = json.dumps(env.keypool["rsa_a"].public_jwk).encode()
    for secret in (pem, jwk_json):
        # joserfc itself refuses a public key as an oct key, so the attacker signs by hand.
        header = {"alg": "HS256", "typ": "at+jwt", "kid": env.keypool["rsa_a"].kid}
        signing_input = f"{b64(header)}.{b64(claims)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        assert env.userinfo(token).status == 401
        assert not env.active(token)


def test_id_token_is_not_an_access_token(env: Env) -> None:
    assert env.userinfo(env.tokens()["id_token"]).status == 401


def test_tampered_payload_is_rejected(env: Env) -> None:
    at = env.tokens()["access_token"]
    h, _, s = at.split(".")
    claims = forged_claims(env, at) | {"sub": "someone-else"}
    assert env.userinfo(f"{h}.{b64(claims)}.{s}").status == 401


def test_garbage_tokens(env: Env) -> None:
    for token in ("", "a.b.c", "...", "x" * 20000, "eyJhbGciOiJSUzI1NiJ9.e30.AAAA"):
        if token:
            assert env.userinfo(token).status == 401
        assert env.active(token or "x") is False


# --- key rotation ------------------------------------------------------------------------------


def test_key_rotation(env: Env) -> None:
    old = env.tokens()
    tid = env.tenant_a.id
    env.config.keys[tid] = [signing_key(env.keypool["rsa_a2"], tid)] + [
        signing_key(env.keypool["rsa_a"], tid, active=False), signing_key(env.keypool["es_a"], tid)]
    new = env.tokens()
    assert jwt.decode(new["id_token"], RSAKey.import_key(env.keypool["rsa_a2"].public_jwk)).header["kid"] == \
        env.keypool["rsa_a2"].kid
    assert env.userinfo(new["access_token"]).status == 200
    assert env.userinfo(old["access_token"]).status == 200  # old key still published
    env.config.keys[tid] = [k for k in env.config.keys[tid] if k.kid != env.keypool["rsa_a"].kid]
    assert env.userinfo(old["access_token"]).status == 401  # unpublished: no longer valid


# --- introspection -----------------------------------------------------------------------------


def test_introspection_of_an_access_token(env: Env) -> None:
    t = env.tokens()
    resp = env.introspect(t["access_token"])
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    b = body(resp)
    assert b["active"] is True and b["client_id"] == "conf" and b["sub"] == "sub-123"
    assert b["scope"] == t["scope"] and b["iss"] == "https://broker.test/t/acme"
    assert b["token_type"] == "Bearer"


def test_introspection_of_a_refresh_token(env: Env) -> None:
    b = body(env.introspect(env.tokens()["refresh_token"]))
    assert b["active"] is True and b["client_id"] == "conf" and b["token_type"] == "refresh_token"


def test_introspection_requires_client_authentication(env: Env) -> None:
    at = env.tokens()["access_token"]
    resp = env.post("introspect", {"token": at})
    assert resp.status == 400 and body(resp)["error"] == "invalid_client"
    resp = env.introspect(at, secret="wrong")
    assert resp.status == 401 and "WWW-Authenticate" in resp.headers


def test_public_clients_cannot_introspect(env: Env) -> None:
    resp = env.post("introspect", {"token": "x", "client_id": "spa"})
    assert body(resp)["error"] == "invalid_client"


def test_introspection_of_another_clients_token_is_inactive(env: Env) -> None:
    at = env.tokens()["access_token"]
    assert body(env.introspect(at, client="other"))["active"] is False


def test_introspection_of_unknown_token(env: Env) -> None:
    assert body(env.introspect("unknown"))["active"] is False


# --- revocation --------------------------------------------------------------------------------


def test_revoking_an_access_token(env: Env) -> None:
    t = env.tokens()
    form = {"token": t["access_token"], "token_type_hint": "access_token"}
    resp = env.post("revoke", form, basic("conf", SECRET))
    assert resp.status == 200
    assert env.userinfo(t["access_token"]).status == 401 and not env.active(t["access_token"])
    assert env.refresh(t["refresh_token"]).status == 200  # the grant survives


def test_revoking_a_refresh_token_revokes_its_grant(env: Env) -> None:
    t = env.tokens()
    assert env.post("revoke", {"token": t["refresh_token"]}, basic("conf", SECRET)).status == 200
    assert body(env.refresh(t["refresh_token"]))["error"] == "invalid_grant"
    assert env.userinfo(t["access_token"]).status == 401


def test_revoking_an_unknown_token_is_200(env: Env) -> None:
    assert env.post("revoke", {"token": "whatever"}, basic("conf", SECRET)).status == 200


def test_revocation_requires_client_authentication(env: Env) -> None:
    t = env.tokens()
    assert env.post("revoke", {"token": t["access_token"]}).status == 400
    assert env.post("revoke", {"token": t["access_token"]}, basic("conf", "wrong")).status == 401
    assert env.userinfo(t["access_token"]).status == 200


def test_another_client_cannot_revoke(env: Env) -> None:
    t = env.tokens()
    resp = env.post("revoke", {"token": t["access_token"]}, basic("other", SECRET))
    assert resp.status == 400
    assert env.userinfo(t["access_token"]).status == 200


def test_public_client_revokes_with_client_id(env: Env) -> None:
    from tests.issuer.conftest import pkce_pair

    verifier, challenge = pkce_pair()
    code = env.code_for(env.authorize_spa(challenge))
    t = body(env.exchange(code, client="spa", method="none", code_verifier=verifier))
    assert env.post("revoke", {"token": t["refresh_token"], "client_id": "spa"}).status == 200
    assert env.userinfo(t["access_token"]).status == 401


@pytest.mark.parametrize("endpoint", ["introspect", "revoke"])
def test_missing_token_parameter(env: Env, endpoint: str) -> None:
    resp = env.post(endpoint, {}, basic("conf", SECRET))
    assert resp.status == 400 and body(resp)["error"] == "invalid_request"


def test_an_unknown_token_type_hint_is_ignored_not_refused(env: Env) -> None:
    # RFC 7662 §2.1 / RFC 7009 §2.1: the hint only orders the search, which extends to every token type.
    t = env.tokens()
    form = {"token": t["access_token"], "token_type_hint": "saml_assertion"}
    assert body(env.post("introspect", form, basic("conf", SECRET)))["active"] is True
    assert env.post("revoke", {**form, "token": t["refresh_token"]}, basic("conf", SECRET)).status == 200
    assert body(env.refresh(t["refresh_token"]))["error"] == "invalid_grant"
    missing = env.post("introspect", {"token_type_hint": "access_token"}, basic("conf", SECRET))
    assert missing.status == 400 and body(missing)["error"] == "invalid_request"
