"""refresh_token grant: rotation on every use, reuse revokes the family (RFC 9700 §4.14.2)."""

from __future__ import annotations

import math
from typing import Any

from broker.issuer.records import Ledger
from tests.issuer.conftest import SECRET, Env, basic


def body(resp: Any) -> dict[str, Any]:
    assert isinstance(resp.body, dict)
    return resp.body


def test_rotation_issues_a_new_refresh_token_and_spends_the_old(env: Env) -> None:
    t1 = env.tokens()
    r2 = env.refresh(t1["refresh_token"])
    assert r2.status == 200, r2.body
    t2 = body(r2)
    assert t2["refresh_token"] != t1["refresh_token"]
    assert t2["scope"] == t1["scope"] and "id_token" in t2
    assert env.userinfo(t2["access_token"]).status == 200
    assert env.active(t2["refresh_token"]) and not env.active(t1["refresh_token"])
    t3 = body(env.refresh(t2["refresh_token"]))
    assert env.active(t3["refresh_token"])


def test_reuse_of_a_rotated_token_revokes_the_whole_family(env: Env) -> None:
    t1 = env.tokens()
    t2 = body(env.refresh(t1["refresh_token"]))
    reuse = env.refresh(t1["refresh_token"])
    assert reuse.status == 400 and body(reuse)["error"] == "invalid_grant"
    # every token of the family is dead: the newest refresh token and all access tokens
    assert body(env.refresh(t2["refresh_token"]))["error"] == "invalid_grant"
    for at in (t1["access_token"], t2["access_token"]):
        assert env.userinfo(at).status == 401
        assert not env.active(at)
    assert any(e.details.get("refresh_reuse") for e in env.audit.events)


def test_other_families_survive_a_reuse(env: Env) -> None:
    a, b = env.tokens(), env.tokens()
    env.refresh(a["refresh_token"])
    env.refresh(a["refresh_token"])
    assert env.refresh(b["refresh_token"]).status == 200


def test_refresh_can_narrow_but_not_widen_scope(env: Env) -> None:
    t1 = env.tokens(scope="openid email offline_access")
    narrowed = body(env.refresh(t1["refresh_token"], scope="openid"))
    assert narrowed["scope"] == "openid"
    # the new refresh token keeps the grant's scope (RFC 6749 §6)
    again = body(env.refresh(narrowed["refresh_token"], scope="openid email"))
    assert again["scope"] == "openid email"
    wide = env.refresh(again["refresh_token"], scope="openid profile")
    assert body(wide)["error"] == "invalid_scope"


def test_refresh_by_another_client_fails(env: Env) -> None:
    t = env.tokens()
    assert body(env.refresh(t["refresh_token"], client="other"))["error"] == "invalid_grant"
    assert env.refresh(t["refresh_token"]).status == 200


def test_refresh_token_expires(env: Env) -> None:
    t = env.tokens()
    env.clock.advance(86400 + 1)
    assert body(env.refresh(t["refresh_token"]))["error"] == "invalid_grant"


def test_refresh_tokens_of_tenant_a_are_unknown_in_tenant_b(env: Env) -> None:
    from tests.issuer.conftest import SECRET, basic

    t = env.tokens()
    resp = env.post("token", {"grant_type": "refresh_token", "refresh_token": t["refresh_token"]},
                    basic("conf", SECRET), tenant=env.tenant_b)
    assert body(resp)["error"] == "invalid_grant"
    assert env.refresh(t["refresh_token"]).status == 200  # and it was not spent by the attempt


def test_no_refresh_when_the_app_does_not_allow_offline_access(env: Env) -> None:
    code = env.code_for(env.authorize(client_id="nooffline", scope="openid email"))
    t = body(env.exchange(code, client="nooffline"))
    assert "refresh_token" not in t


def _gid(access_token: str) -> str:
    import base64
    import json

    payload = access_token.split(".")[1]
    gid: str = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["gid"]
    return gid


def test_a_second_reuse_does_not_shorten_the_familys_revocation(env: Env) -> None:
    """Two clients racing with the same spent token: the second used to write the deny entry again for an
    hour, so a token minted by a concurrent rotation outlived it (the family came back after an hour)."""
    t1 = env.tokens()
    t2 = body(env.refresh(t1["refresh_token"]))
    gid = _gid(t2["access_token"])
    assert env.refresh(t1["refresh_token"]).status == 400  # the family is revoked for as long as it could live
    assert env.refresh(t1["refresh_token"]).status == 400  # and a second reuse leaves that alone
    env.clock.advance(2 * 3600)
    assert Ledger(env.state).grant_revoked(gid)


def test_a_rotation_that_loses_a_race_with_a_reuse_writes_no_grant(env: Env, monkeypatch: Any) -> None:
    """The winner of take_refresh, past its checks, meets a reuse of the same token from another replica
    before it writes the new family members: it must not write the grant back (it would outlive its deny)."""
    from broker.issuer.tokens import TokenCodec

    t1 = env.tokens()
    t2 = body(env.refresh(t1["refresh_token"]))
    sign = TokenCodec.sign
    raced: list[Any] = []

    def sign_then_race(self: TokenCodec, *args: Any, **kwargs: Any) -> str:
        if not raced:  # another client presents the spent t1 while this rotation is being answered
            raced.append(env.refresh(t1["refresh_token"]))
        return sign(self, *args, **kwargs)

    monkeypatch.setattr(TokenCodec, "sign", sign_then_race)
    winner = env.refresh(t2["refresh_token"])
    assert raced[0].status == 400
    assert winner.status == 400 and body(winner)["error"] == "invalid_grant"
    monkeypatch.setattr(TokenCodec, "sign", sign)
    assert Ledger(env.state).grant(_gid(t2["access_token"])) is None
    assert env.refresh(t2["refresh_token"]).status == 400


def test_revoking_a_refresh_token_already_rotated_ends_its_family(env: Env) -> None:
    """A client signing out with the refresh token it holds, while another tab has just rotated it."""
    t1 = env.tokens()
    t2 = body(env.refresh(t1["refresh_token"]))
    assert env.post("revoke", {"token": t1["refresh_token"]}, basic("conf", SECRET)).status == 200
    assert env.refresh(t2["refresh_token"]).status == 400
    assert env.userinfo(t2["access_token"]).status == 401
    assert any(e.details.get("revoked") == "refresh_token_family" for e in env.audit.events)


def test_another_client_cannot_revoke_a_spent_refresh_token_family(env: Env) -> None:
    t1 = env.tokens()
    t2 = body(env.refresh(t1["refresh_token"]))
    env.post("revoke", {"token": t1["refresh_token"]}, basic("poster", SECRET))
    assert env.refresh(t2["refresh_token"]).status == 200


# --- tagged refresh tokens: a rotation leaves nothing behind -----------------------------------------------


def _keys(env: Env, infix: str) -> list[str]:
    return [k for k in env.state._entries if infix in k]


def test_rotations_store_nothing_for_reuse_detection_and_a_reuse_is_still_caught(env: Env) -> None:
    """Each refresh token says, under a tag only the broker can make, which family it belongs to: the store
    holds the live token and no record per rotated one, and presenting any rotated token ends the family."""
    tokens = [env.tokens()]
    for _ in range(5):
        tokens.append(body(env.refresh(tokens[-1]["refresh_token"])))
    rt = tokens[0]["refresh_token"]
    random, gid, exp, tag = rt.split("~")
    assert gid == _gid(tokens[0]["access_token"]) and len(random) == 43 and len(tag) == 32
    assert int(exp) == math.ceil(env.clock.now() + env.conf.refresh_token_ttl)  # the clock is frozen
    assert _keys(env, "rt-family:") == [] and len(_keys(env, ":rt:")) == 1
    assert env.refresh(tokens[2]["refresh_token"]).status == 400  # a rotated one, from the middle
    assert body(env.refresh(tokens[-1]["refresh_token"]))["error"] == "invalid_grant", "the family is revoked"


def test_a_forged_token_naming_a_family_cannot_revoke_it(env: Env) -> None:
    """The grant id is in every access token: a refresh token made up around it (a wrong tag, an altered
    expiry or grant) names no family, so presenting or revoking it ends nothing."""
    t1 = env.tokens()
    random, gid, exp, tag = t1["refresh_token"].split("~")
    other = "y" if random[0] == "x" else "x"  # a first character that differs from the real one
    for forged in (f"{random}~{gid}~{exp}~{'0' * 32}", f"{random}~{gid}~{int(exp) + 1}~{tag}",
                   f"{other}{random[1:]}~{gid}~{exp}~{tag}", f"{random}~{gid}~{exp}", f"{random}~{gid}~9e9~{tag}"):
        assert body(env.refresh(forged))["error"] == "invalid_grant"
        assert env.post("revoke", {"token": forged}, basic("conf", SECRET)).status == 200
    assert env.refresh(t1["refresh_token"]).status == 200, "the family stands"


def test_a_rotated_token_presented_after_it_would_have_expired_ends_nothing(env: Env) -> None:
    from broker.issuer.grants import tagged_refresh_family, tagged_refresh_token
    from tests.issuer.conftest import HASHER

    token = tagged_refresh_token(HASHER, "gid-1", 1000.4)
    assert token.split("~")[2] == "1001"
    assert tagged_refresh_family(HASHER, token, 1000.9) == "gid-1"
    assert tagged_refresh_family(HASHER, token, 1001.0) is None


def test_tags_made_under_a_previous_secret_key_still_name_their_family() -> None:
    from broker.issuer.grants import tagged_refresh_family, tagged_refresh_token
    from broker.store.sealing import SecretHasher

    old, new = "old-secret-key-0123456789abcdefghij", "new-secret-key-0123456789abcdefghij"
    token = tagged_refresh_token(SecretHasher(old), "gid-2", 5000)
    assert tagged_refresh_family(SecretHasher(new, previous=(old,)), token, 10) == "gid-2"
    assert tagged_refresh_family(SecretHasher(new), token, 10) is None


def test_an_untagged_token_of_an_earlier_release_keeps_its_reuse_detection(env: Env) -> None:
    """Refresh tokens issued before the tagged format (a random string, its family kept in the store) still
    rotate, and their reuse still ends the family."""
    from broker.issuer.records import RefreshRecord

    t1 = env.tokens()
    gid = _gid(t1["access_token"])
    now = env.clock.now()
    legacy = "L" * 43
    record = RefreshRecord(gid=gid, tenant_id=env.tenant_a.id, client_id="conf", scope=("openid", "offline_access"),
                           issued_at=now, expires_at=now + 600)
    for key, value, ttl in Ledger._refresh_puts(legacy, record, 600):
        env.state.put(key, value, ttl)
    assert len(_keys(env, "rt-family:")) == 1
    assert env.refresh(legacy).status == 200
    assert body(env.refresh(legacy))["error"] == "invalid_grant"
    assert body(env.refresh(t1["refresh_token"]))["error"] == "invalid_grant", "its family was revoked"
