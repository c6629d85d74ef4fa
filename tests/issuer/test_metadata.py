"""Discovery (OIDC Discovery §3, RFC 8414) and the JWKS."""

from __future__ import annotations

from tests.issuer.conftest import PUBLIC, Env


def test_issuer_url_is_public_url_and_slug(env: Env) -> None:
    assert env.issuer.issuer_url(env.tenant_a) == f"{PUBLIC}/t/acme"


def test_discovery_fields(env: Env) -> None:
    d = env.issuer.discovery(env.tenant_a)
    t = f"{PUBLIC}/t/acme"
    assert d["issuer"] == t
    assert d["authorization_endpoint"] == f"{t}/authorize"
    assert d["token_endpoint"] == f"{t}/token"
    assert d["userinfo_endpoint"] == f"{t}/userinfo"
    assert d["jwks_uri"] == f"{t}/jwks"
    assert d["introspection_endpoint"] == f"{t}/introspect"
    assert d["revocation_endpoint"] == f"{t}/revoke"
    assert d["end_session_endpoint"] == f"{t}/logout"
    assert d["response_types_supported"] == ["code"]
    assert d["response_modes_supported"] == ["query", "form_post"]
    assert set(d["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    assert d["subject_types_supported"] == ["public", "pairwise"]
    assert d["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert d["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "client_secret_post", "none"]
    assert d["scopes_supported"] == ["openid", "profile", "email", "groups", "offline_access"]
    assert {"sub", "email", "groups", "tenant", "connection", "idp"} <= set(d["claims_supported"])
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert d["authorization_response_iss_parameter_supported"] is True


def test_tenants_have_their_own_issuer(env: Env) -> None:
    assert env.issuer.discovery(env.tenant_b)["issuer"] == f"{PUBLIC}/t/globex"


def test_jwks_publishes_public_keys_only(env: Env) -> None:
    jwks = env.issuer.jwks(env.tenant_a)
    kids = [k["kid"] for k in jwks["keys"]]
    assert kids == [env.keypool["rsa_a"].kid, env.keypool["es_a"].kid]
    for k in jwks["keys"]:
        assert k["use"] == "sig" and k["alg"] in ("RS256", "ES256")
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(k)


def test_jwks_is_per_tenant(env: Env) -> None:
    assert [k["kid"] for k in env.issuer.jwks(env.tenant_b)["keys"]] == [env.keypool["rsa_b"].kid]
