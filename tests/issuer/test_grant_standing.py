"""A grant stands only while what it was issued through does: its app (not another app re-created under the
same client_id) and its connection (still there, and enabled). Deleting an app, or deleting or disabling a
connection, ends its unredeemed codes, refresh tokens and access tokens (userinfo and introspection)."""

from __future__ import annotations

import json
from dataclasses import replace

from broker.issuer.records import PREFIX, digest
from tests.issuer.conftest import Env, make_app, make_connection


def _grant_is_refused(env: Env, tokens: dict[str, str]) -> None:
    assert env.refresh(tokens["refresh_token"]).body["error"] == "invalid_grant"  # type: ignore[index]
    assert env.userinfo(tokens["access_token"]).status == 401
    assert not env.active(tokens["access_token"])
    assert not env.active(tokens["refresh_token"])


def test_an_app_deleted_and_recreated_under_its_client_id_does_not_inherit_its_grants(env: Env) -> None:
    tokens = env.tokens()
    pending = env.code_for(env.authorize())
    del env.config.apps[(env.tenant_a.id, "conf")]
    assert env.userinfo(tokens["access_token"]).status == 401, "the app is gone"
    env.config.add_app(make_app(env.tenant_a, "conf", id="app-conf-recreated"))
    _grant_is_refused(env, tokens)
    assert env.exchange(pending).body["error"] == "invalid_grant"  # type: ignore[index]
    assert env.audit.events[-1].details.get("grant_ended") == "app_removed"
    fresh = env.tokens()  # the new app's own logins work
    assert env.userinfo(fresh["access_token"]).status == 200
    assert env.refresh(fresh["refresh_token"]).status == 200


def test_a_disabled_connection_suspends_its_grants_and_a_deleted_one_ends_them(env: Env) -> None:
    tokens = env.tokens()
    pending = env.code_for(env.authorize())
    okta = env.config.conns[(env.tenant_a.id, "okta")]
    env.config.add_connection(replace(okta, enabled=False))
    _grant_is_refused(env, tokens)
    assert env.exchange(pending).body["error"] == "invalid_grant"  # type: ignore[index]
    assert env.audit.events[-1].details.get("grant_ended") == "connection_removed_or_disabled"

    env.config.add_connection(okta)  # enabled again: a suspension, not a revocation
    assert env.userinfo(tokens["access_token"]).status == 200
    rotated = env.refresh(tokens["refresh_token"])
    assert rotated.status == 200, rotated.body

    # deleted, and a connection created again under the same slug: another connection
    env.config.add_connection(make_connection(env.tenant_a, "okta", id="conn-acme-okta-2"))
    _grant_is_refused(env, rotated.body)  # type: ignore[arg-type]


def test_grants_of_an_earlier_version_without_ids_stand_while_app_and_connection_exist(env: Env) -> None:
    tokens = env.tokens()
    key = f"{PREFIX}grant:" + json.loads(
        env.state.get(f"{PREFIX}rt:{digest(tokens['refresh_token'])}") or b"{}")["gid"]
    legacy = json.loads(env.state.get(key) or b"{}")
    legacy.pop("app_id"), legacy.pop("connection_id")
    env.state.put(key, json.dumps(legacy).encode(), ttl=3600)
    assert env.userinfo(tokens["access_token"]).status == 200
    env.config.add_connection(replace(env.config.conns[(env.tenant_a.id, "okta")], enabled=False))
    assert env.userinfo(tokens["access_token"]).status == 401
