"""A rotated-out signing key: published while tokens it signed can be live, then unpublished and no longer
trusted for access tokens; still read for id_token_hints at logout."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from broker.issuer.keys import RETIRED_KEY_PUBLISHED_SECONDS
from broker.issuer.messages import AuthorizeError, RevokedHint
from broker.model import MAX_SIGNED_TOKEN_TTL
from tests.issuer.conftest import Env, signing_key


def _rotate(env: Env) -> None:
    """Make rsa_a2 the tenant's active RS256 key: tokens issued from here on are signed with it."""
    ta = env.tenant_a.id
    env.config.keys[ta] = [signing_key(env.keypool["rsa_a2"], ta), signing_key(env.keypool["es_a"], ta)]


def _retire(env: Env, retired_ago: float) -> None:
    """rsa_a2 becomes a key retired `retired_ago` seconds before the clock's time; rsa_a is active again."""
    ta = env.tenant_a.id
    retired = replace(signing_key(env.keypool["rsa_a2"], ta), active=False,
                      retired_at=datetime.fromtimestamp(env.clock.now() - retired_ago, UTC))
    env.config.keys[ta] = [signing_key(env.keypool["rsa_a"], ta), signing_key(env.keypool["es_a"], ta), retired]


def _kids(env: Env) -> set[str]:
    return {k["kid"] for k in env.issuer.jwks(env.tenant_a)["keys"]}


def test_the_window_outlasts_every_token_a_key_can_sign() -> None:
    assert RETIRED_KEY_PUBLISHED_SECONDS > MAX_SIGNED_TOKEN_TTL + 60  # + the leeway for replicas' clocks


def test_retired_key_stays_published_until_its_tokens_have_expired(env: Env) -> None:
    old = env.keypool["rsa_a2"].kid
    _retire(env, retired_ago=0)
    assert old in _kids(env) and env.keypool["rsa_a"].kid in _kids(env)
    env.clock.advance(MAX_SIGNED_TOKEN_TTL + 60)
    assert old in _kids(env)
    env.clock.advance(RETIRED_KEY_PUBLISHED_SECONDS - MAX_SIGNED_TOKEN_TTL - 60)
    assert old not in _kids(env)
    assert _kids(env) == {env.keypool["rsa_a"].kid, env.keypool["es_a"].kid}


def test_a_retired_key_without_a_retirement_time_stays_published(env: Env) -> None:
    ta = env.tenant_a.id
    legacy = replace(signing_key(env.keypool["rsa_a2"], ta), active=False, retired_at=None)
    env.config.keys[ta].append(legacy)
    env.clock.advance(400 * 86400)
    assert legacy.kid in _kids(env)


@pytest.mark.parametrize("retired_ago, live", [(60.0, True), (RETIRED_KEY_PUBLISHED_SECONDS + 1.0, False)])
def test_access_token_is_trusted_only_while_its_key_is_published(env: Env, retired_ago: float,
                                                                  live: bool) -> None:
    """A key rotated out because it leaked: a token made with it later (an unexpired exp) is refused once
    the key has left the JWKS."""
    _rotate(env)
    tokens = env.tokens()
    _retire(env, retired_ago)
    assert env.active(tokens["access_token"]) is live
    assert (env.userinfo(tokens["access_token"]).status == 200) is live


def test_id_token_hint_of_an_unpublished_key_still_signs_out(env: Env) -> None:
    _rotate(env)
    hint = env.tokens()["id_token"]
    _retire(env, RETIRED_KEY_PUBLISHED_SECONDS + 30 * 86400)
    assert env.keypool["rsa_a2"].kid not in _kids(env)
    ending = env.issuer.end_session(env.tenant_a, {"id_token_hint": hint,
                                                   "post_logout_redirect_uri": "https://app.example/bye"})
    assert ending.target == "https://app.example/bye" and ending.hint_sid == "sess-1"


def _header_kid(jwt: str) -> str:
    import base64
    import json

    part = jwt.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))["kid"])


def test_a_staged_key_is_published_before_it_signs(env: Env) -> None:
    """A staged rotation: rsa_a signs until rsa_a2's activation, both published meanwhile; from then rsa_a2
    signs, and a token rsa_a signed just before stays valid."""
    ta = env.tenant_a.id
    starts = datetime.fromtimestamp(env.clock.now() + 600, UTC)
    env.config.keys[ta] = [replace(signing_key(env.keypool["rsa_a"], ta), retired_at=starts),
                           replace(signing_key(env.keypool["rsa_a2"], ta), activates_at=starts),
                           signing_key(env.keypool["es_a"], ta)]
    assert _kids(env) >= {env.keypool["rsa_a"].kid, env.keypool["rsa_a2"].kid}
    before = env.tokens()
    assert _header_kid(before["id_token"]) == _header_kid(before["access_token"]) == env.keypool["rsa_a"].kid
    env.clock.advance(599)
    last_of_old = env.tokens()
    assert _header_kid(last_of_old["id_token"]) == env.keypool["rsa_a"].kid
    env.clock.advance(1)
    after = env.tokens()
    assert _header_kid(after["id_token"]) == _header_kid(after["access_token"]) == env.keypool["rsa_a2"].kid
    assert _kids(env) >= {env.keypool["rsa_a"].kid, env.keypool["rsa_a2"].kid}
    assert env.active(last_of_old["access_token"]) and env.active(after["access_token"])


def test_a_revoked_key_is_trusted_for_nothing(env: Env) -> None:
    """A key that leaked and was revoked: gone from the JWKS at once, its access tokens refused, and an
    id_token_hint it signed no longer read (one forged with it would otherwise pass)."""
    _rotate(env)
    tokens = env.tokens()
    ta = env.tenant_a.id
    now = datetime.fromtimestamp(env.clock.now(), UTC)
    revoked = replace(signing_key(env.keypool["rsa_a2"], ta), active=False, retired_at=now, revoked_at=now)
    env.config.keys[ta] = [signing_key(env.keypool["rsa_a"], ta), signing_key(env.keypool["es_a"], ta), revoked]
    assert env.keypool["rsa_a2"].kid not in _kids(env)
    assert env.active(tokens["access_token"]) is False and env.userinfo(tokens["access_token"]).status == 401
    with pytest.raises(RevokedHint):
        env.issuer.hinted_user(env.tenant_a, tokens["id_token"])
    # at logout it is read as no hint: the user can still sign out, and is sent back to the app only where a
    # client_id sent along allows it
    bye = "https://app.example/bye"
    ending = env.issuer.end_session(env.tenant_a, {"id_token_hint": tokens["id_token"],
                                                   "post_logout_redirect_uri": bye})
    assert ending.target is None and ending.hint_sid is None and ending.hint_revoked
    ending = env.issuer.end_session(env.tenant_a, {"id_token_hint": tokens["id_token"], "client_id": "conf",
                                                   "post_logout_redirect_uri": bye})
    assert ending.target == bye and ending.hint_sid is None
    with pytest.raises(AuthorizeError) as err:  # any other invalid hint stays an error
        env.issuer.end_session(env.tenant_a, {"id_token_hint": "a.b.c"})
    assert not isinstance(err.value, RevokedHint)
    fresh = env.tokens()
    assert _header_kid(fresh["id_token"]) == env.keypool["rsa_a"].kid and env.active(fresh["access_token"])
