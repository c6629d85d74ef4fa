"""broker.login: how a login transaction is stored."""

from __future__ import annotations

import json
from dataclasses import asdict

from broker.login import txn_from_json, txn_owner_prefix, txn_to_json
from broker.model import AuthorizationRequest, LoginTransaction


def _full_request(**over: object) -> AuthorizationRequest:
    values: dict[str, object] = dict(
        client_id="app", redirect_uri="https://app.example/cb", scope=("openid", "email"), state="st\u00e9",
        nonce="n", code_challenge="c" * 43, code_challenge_method="S256", prompt=("login", "consent"), max_age=60,
        login_hint="ann@example.com", response_mode="form_post", hint_sub="sub-1", hint_client="other-app")
    values.update(over)
    return AuthorizationRequest(**values)  # type: ignore[arg-type]


def _txn(request: AuthorizationRequest | None) -> LoginTransaction:
    return LoginTransaction(id="txn", tenant_id="ten", tenant_slug="acme", connection_id="con",
                            connection_slug="okta", request=request,
                            upstream={"request_id": "_abc", "verifier": "v"}, browser_binding="b" * 64,
                            created_at=1700000000.25, expires_at=1700000600.25, purpose="login")


def _as_asdict_wrote_it(txn: LoginTransaction) -> dict[str, object]:
    """The stored form defined by dataclasses.asdict (owner fields first, later request fields left out when
    unset): the shape every release so far has read."""
    data = json.loads(json.dumps(asdict(txn)))
    head = {k: data.pop(k) for k in ("tenant_id", "connection_id", "browser_binding")}
    if data["request"] is not None:
        for name in ("response_mode", "hint_sub", "hint_client"):
            if data["request"][name] is None:
                del data["request"][name]
    return {**head, **data}


def test_a_stored_transaction_has_the_asdict_shape_with_the_owner_first() -> None:
    for txn in (_txn(_full_request()), _txn(None),
                _txn(_full_request(response_mode=None, hint_sub=None, hint_client=None, prompt=(), max_age=None))):
        raw = txn_to_json(txn)
        assert json.loads(raw) == _as_asdict_wrote_it(txn)
        assert list(json.loads(raw)) == list(_as_asdict_wrote_it(txn))  # same key order
        assert raw.startswith(txn_owner_prefix("ten", "con", "b" * 64))
        assert txn_from_json(raw) == txn

