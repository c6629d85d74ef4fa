"""SPEC security invariants for SAML, attacked through the real ACS endpoint. Each test is named for the
attack; each checks the refusal, the audit reason, and that no authorization code came out."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.samlxml.idp_fixtures import build_response, make_idp, to_post_binding
from tests.security.conftest import REDIRECT_URI, Pending, Setup
from tests.support.saml_idp import query_of

ATTRS = {"email": ["alice@acme.test"], "firstName": ["Alice"], "lastName": ["L"], "groups": ["Admins"]}


def _response(sec: Setup, p: Pending, **kw: object) -> bytes:
    args: dict[str, object] = {"acs_url": p.acs_url, "audience": p.audience, "in_response_to": p.request_id,
                               "name_id": "alice@acme.test", "attributes": ATTRS}
    args.update(kw)
    idp = args.pop("idp", sec.idp_a)
    return build_response(idp, **args)  # type: ignore[arg-type]


def _refused(sec: Setup, r: object, reason: str, *, redirected: bool = True) -> None:
    status = r.status_code  # type: ignore[attr-defined]
    headers = r.headers  # type: ignore[attr-defined]
    if redirected:
        assert status == 302, (status, r.data[:400])  # type: ignore[attr-defined]
        q = query_of(headers["Location"])
        assert headers["Location"].startswith(REDIRECT_URI)
        assert q["error"] == "access_denied" and "code" not in q and q["error_description"]
    else:
        assert 400 <= status < 500 and "code=" not in headers.get("Location", "")
    assert sec.failures()[0]["reason"] == reason


def test_legitimate_login_succeeds(sec: Setup) -> None:
    p = sec.begin()
    r = sec.post("acme", "okta", _response(sec, p), p.relay_state)
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"])


def test_unsigned_response_is_refused(sec: Setup) -> None:
    p = sec.begin()
    r = sec.post("acme", "okta", _response(sec, p, sign_response=False, sign_assertion=False), p.relay_state)
    _refused(sec, r, "saml_signature_missing")


def test_response_signed_by_another_key_is_refused(sec: Setup) -> None:
    p = sec.begin()
    evil = make_idp("https://attacker.test/metadata")
    r = sec.post("acme", "okta", _response(sec, p, signer=evil), p.relay_state)
    _refused(sec, r, "saml_signature_invalid")


def test_tenant_b_idp_posting_to_tenant_a_acs_is_refused(sec: Setup) -> None:
    """Same IdP entityID registered in two tenants: each connection trusts only its own certificates."""
    p = sec.begin("acme")
    r = sec.post("acme", "okta", _response(sec, p, idp=sec.idp_b, signature_algorithm="ecdsa-sha256"),
                 p.relay_state)
    _refused(sec, r, "saml_signature_invalid")


def test_wrong_audience_is_refused(sec: Setup) -> None:
    p = sec.begin()
    r = sec.post("acme", "okta", _response(sec, p, audience="https://other-sp.test"), p.relay_state)
    _refused(sec, r, "saml_audience_mismatch")


def test_response_for_another_connections_acs_is_refused(sec: Setup) -> None:
    p = sec.begin()
    other = p.acs_url.replace("/t/acme/", "/t/globex/")
    r = sec.post("acme", "okta", _response(sec, p, acs_url=other), p.relay_state)
    _refused(sec, r, "saml_destination_mismatch")


def test_expired_assertion_is_refused(sec: Setup) -> None:
    p = sec.begin()
    old = time.time() - 3600
    r = sec.post("acme", "okta", _response(sec, p, issue_instant=old), p.relay_state)
    _refused(sec, r, "saml_expired")


def test_in_response_to_of_another_request_is_refused(sec: Setup) -> None:
    first = sec.begin(state="a")
    second = sec.begin(state="b")
    r = sec.post("acme", "okta", _response(sec, first), second.relay_state)
    _refused(sec, r, "saml_in_response_to_mismatch")


def test_unsolicited_response_is_refused_when_idp_initiated_is_off(sec: Setup) -> None:
    p = sec.begin()
    r = sec.post("acme", "okta", _response(sec, p, in_response_to=None, subject_in_response_to=None), None)
    _refused(sec, r, "saml_unsolicited", redirected=False)


def test_a_login_the_database_could_not_record_can_be_posted_again(sec: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """A login that cannot be audited does not happen: the ACS answers 503 without a code, and what the answer
    used up (its transaction, the assertion's replay-cache entry) is given back, so that the browser's retry
    of the same answer succeeds once the database is back. After that success it is a replay as ever."""
    sink = sec.app.extensions["broker"].auditor._sink
    written: list[str] = []
    down = True

    def record(event: object, __original: Any = sink.record) -> None:
        if down:
            raise OSError("connection refused")
        written.append(getattr(event, "outcome", ""))
        __original(event)

    monkeypatch.setattr(sink, "record", record)
    p = sec.begin()
    response = _response(sec, p)
    r = sec.post("acme", "okta", response, p.relay_state)
    assert r.status_code == 503 and "code=" not in r.headers.get("Location", "")
    assert "Traceback" not in r.get_data(as_text=True)
    down = False
    again = sec.post("acme", "okta", response, p.relay_state)
    assert again.status_code == 302, again.get_data(as_text=True)[:500]
    code = query_of(again.headers["Location"])["code"]
    assert sec.id_token_claims(code)["email"] == "alice@acme.test"
    assert written[:1] == ["success"]
    third = sec.post("acme", "okta", response, p.relay_state)
    assert third.status_code == 400 and "code=" not in third.headers.get("Location", "")
    assert sec.failures()[0]["reason"] == "saml_replay"


def test_what_a_login_not_recorded_gives_back_depends_on_its_connector_and_time(sec: Setup) -> None:
    """The transaction goes back only with the answer: a connector that cannot release it (OIDC) leaves the
    login ended, as before; an expired transaction is not put back and the connector is not asked."""
    from broker.login import TXN_PREFIX, txn_from_json
    from broker.model import UpstreamIdentity

    class Stub:
        def __init__(self, releases: bool) -> None:
            self.releases, self.asked = releases, 0

        def release(self, identity: UpstreamIdentity) -> bool:
            self.asked += 1
            return self.releases

    login = sec.app.extensions["broker"].extras["login"]
    key = TXN_PREFIX + sec.begin().relay_state
    raw = login.state.take(key)
    txn = txn_from_json(raw)
    identity = UpstreamIdentity(protocol="oidc", issuer="https://op.test", subject="u", subject_format=None,
                                attributes={})
    cannot = Stub(False)
    login._give_back(cannot, identity, txn)
    assert cannot.asked == 1 and login.state.get(key) is None
    can = Stub(True)
    login._give_back(can, identity, txn)
    assert can.asked == 1 and login.state.get(key) == raw
    login.state.take(key)
    sec.clock.offset = login.login_ttl + 5
    late = Stub(True)
    login._give_back(late, identity, txn)
    assert late.asked == 0 and login.state.get(key) is None


def test_replayed_assertion_is_refused(sec: Setup) -> None:
    p = sec.begin()
    response = _response(sec, p)
    assert sec.post("acme", "okta", response, p.relay_state).status_code == 302
    again = sec.post("acme", "okta", response, p.relay_state)
    assert again.status_code == 400 and "code=" not in again.headers.get("Location", "")
    assert sec.failures()[0]["reason"] == "saml_replay"


def test_sha1_signature_refused_without_allow_sha1(sec: Setup) -> None:
    p = sec.begin()
    r = sec.post("acme", "okta", _response(sec, p, signature_algorithm="rsa-sha1", digest_algorithm="sha1"),
                 p.relay_state)
    _refused(sec, r, "saml_algorithm_refused")


def test_sha1_allowed_by_connection_is_audited_with_a_warning(sec: Setup) -> None:
    r = sec.admin("PATCH", "/tenants/acme/connections/okta", {"saml": {"allow_sha1": True}})
    assert r.status_code == 200, r.get_json()
    p = sec.begin()
    ok = sec.post("acme", "okta", _response(sec, p, signature_algorithm="rsa-sha1", digest_algorithm="sha1"),
                  p.relay_state)
    assert ok.status_code == 302 and "code" in query_of(ok.headers["Location"])
    events = sec.admin("GET", "/tenants/acme/audit?type=login&outcome=success").get_json()["events"]
    assert "sha1" in events[0]["details"]["warnings"]


def test_xxe_in_saml_response_is_refused(sec: Setup) -> None:
    p = sec.begin()
    evil = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&x;</samlp:Response>')
    r = sec.post("acme", "okta", evil, p.relay_state)
    assert r.status_code == 302
    assert b"root:" not in r.data
    assert sec.failures()[0]["reason"] == "xml_forbidden"


@pytest.mark.parametrize("garbage", ["%%%not-base64%%%", "PHNhbWw+", "", "A" * 10])
def test_garbage_saml_response_is_a_clear_4xx(sec: Setup, garbage: str) -> None:
    r = sec.post("acme", "okta", garbage, None)
    assert 400 <= r.status_code < 500
    assert b"Traceback" not in r.data


def test_oversized_saml_post_is_413(sec: Setup) -> None:
    big = "A" * (512 * 1024 + 100)
    r = sec.post("acme", "okta", big, None)
    assert r.status_code == 413


def test_restrict_to_domains_refuses_other_email_domains(sec: Setup) -> None:
    assert sec.admin("PATCH", "/tenants/acme/connections/okta", {"restrict_to_domains": True}).status_code == 200
    p = sec.begin()
    attrs = {**ATTRS, "email": ["mallory@evil.test"]}
    r = sec.post("acme", "okta", _response(sec, p, attributes=attrs, name_id="mallory@evil.test"), p.relay_state)
    _refused(sec, r, "login_domain_not_allowed")


@pytest.mark.parametrize(("email", "accepted"), [
    ("alice@xn--bcher-kva.test", True), ("alice@BÜCHER.test", True), ("alice@acme.test.", True),
    ("alice@evilacme.test", False), ("alice@acme.test.evil.test", False), ("alice@b\u00fccher.test@evil.test", False),
])
def test_restrict_to_domains_compares_domains_in_their_stored_form(sec: Setup, email: str, accepted: bool) -> None:
    r = sec.admin("PATCH", "/tenants/acme/connections/okta",
                  {"restrict_to_domains": True, "domains": ["acme.test", "xn--bcher-kva.test"]})
    assert r.status_code == 200 and r.get_json()["domains"] == ["acme.test", "bücher.test"]
    p = sec.begin()
    r = sec.post("acme", "okta", _response(sec, p, attributes={**ATTRS, "email": [email]}, name_id=email),
                 p.relay_state)
    if accepted:
        assert r.status_code == 302 and "code" in query_of(r.headers["Location"]), r.data[:300]
    else:
        _refused(sec, r, "login_domain_not_allowed")


@pytest.mark.parametrize(("email", "verified"), [
    ("alice@acme.test", True), ("alice@ACME.test.", True), ("ceo@other-company.test", False),
    ("alice@acme.test.other-company.test", False),
])
def test_an_email_outside_the_connections_domains_is_not_verified(sec: Setup, email: str, verified: bool) -> None:
    """A connection is trusted for its own domains: its IdP cannot hand apps a verified address elsewhere
    (an app that links accounts by verified email would otherwise give that IdP's users other people's
    accounts). The login itself goes through (restrict_to_domains is off), and the audit says why."""
    p = sec.begin()
    r = sec.post("acme", "okta", _response(sec, p, attributes={**ATTRS, "email": [email]}, name_id=email),
                 p.relay_state)
    assert r.status_code == 302, r.data[:300]
    claims = sec.id_token_claims(query_of(r.headers["Location"])["code"])
    assert claims["email_verified"] is verified
    login = [e for e in sec.admin("GET", "/tenants/acme/audit?type=login").get_json()["events"]
             if e["outcome"] == "success"][0]
    flagged = any("not one of this connection's domains" in w for w in login["details"].get("mapping_warnings", []))
    assert flagged is not verified


def test_without_domains_the_idps_email_stays_verified(sec: Setup) -> None:
    assert sec.admin("PATCH", "/tenants/acme/connections/okta", {"domains": []}).status_code == 200
    p = sec.begin()
    attrs = {**ATTRS, "email": ["bob@anywhere.test"]}
    r = sec.post("acme", "okta", _response(sec, p, attributes=attrs, name_id="bob@anywhere.test"), p.relay_state)
    assert sec.id_token_claims(query_of(r.headers["Location"])["code"])["email_verified"] is True


@pytest.mark.parametrize("gone", [False, True], ids=["stored-but-past-its-time", "gone-from-the-store"])
def test_an_answer_after_the_login_expired_says_so(sec: Setup, gone: bool) -> None:
    """Not "does not belong to this sign-in" (which reads like an attack): the audit and the page say it
    took too long, whether the store still holds the transaction or has already dropped it."""
    from broker.login import TXN_PREFIX
    from broker.web.context import services

    p = sec.begin()
    response = _response(sec, p)
    if gone:
        with sec.app.app_context():
            services().state.delete(TXN_PREFIX + p.relay_state)
    sec.clock.offset = 601  # BROKER_LOGIN_TTL is 600 s
    r = sec.post("acme", "okta", response, p.relay_state)
    assert r.status_code == 400 and "took too long" in r.get_data(as_text=True)
    assert sec.failures()[0]["reason"] == "login_expired"


def test_an_answer_without_a_transaction_before_its_time_is_still_a_mismatch(sec: Setup) -> None:
    from broker.login import TXN_PREFIX
    from broker.web.context import services

    p = sec.begin()
    with sec.app.app_context():
        services().state.delete(TXN_PREFIX + p.relay_state)  # used already, or never issued
    r = sec.post("acme", "okta", _response(sec, p), p.relay_state)
    assert 400 <= r.status_code < 500
    assert sec.failures()[0]["reason"] == "saml_in_response_to_mismatch"


def test_an_anonymous_post_built_to_be_slow_to_canonicalize_is_refused_at_once(sec: Setup) -> None:
    """700 namespaces in scope of 700 elements, under a forged signature asking for Inclusive C14N: 6 s of
    CPU per post before the parser's limits, for anyone, with no cookie or RelayState."""
    import base64 as b64

    declarations = " ".join(f'xmlns:n{i}="urn:n{i}"' for i in range(700))
    xml = ('<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
           'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r1" Version="2.0" '
           'IssueInstant="2026-01-01T00:00:00Z"><samlp:Status><samlp:StatusCode '
           'Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>'
           f'<saml:Assertion {declarations} ID="_a1" Version="2.0" IssueInstant="2026-01-01T00:00:00Z">'
           f'<saml:Issuer>x</saml:Issuer><saml:Subject><x xmlns="urn:x">{"<v/>" * 700}</x></saml:Subject>'
           '</saml:Assertion></samlp:Response>')
    r = sec.client.post("/t/acme/connections/okta/saml/acs",
                        data={"SAMLResponse": b64.b64encode(xml.encode()).decode()})
    assert 400 <= r.status_code < 500
    assert sec.failures()[0]["reason"] == "xml_too_large"  # refused by the parser, before any canonicalization


def test_each_tenant_trusts_its_own_idp_key(sec: Setup) -> None:
    p = sec.begin("globex")
    r = sec.post("globex", "okta", _response(sec, p, idp=sec.idp_b, signature_algorithm="ecdsa-sha256"),
                 p.relay_state)
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"])


def test_response_posted_from_another_browser_leaves_the_login_to_its_owner(sec: Setup) -> None:
    """A Response (with its RelayState) posted by a browser that did not start the login is refused, and the
    refusal consumes nothing: the owner's own post of the same Response still completes."""
    p = sec.begin()
    response = _response(sec, p)
    stranger = sec.app.test_client()  # no browser-binding cookie
    r = stranger.post("/t/acme/connections/okta/saml/acs",
                      data={"SAMLResponse": to_post_binding(response), "RelayState": p.relay_state})
    _refused(sec, r, "login_browser_mismatch", redirected=False)
    r = sec.post("acme", "okta", response, p.relay_state)
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"]), r.data[:300]


def test_relay_state_posted_to_another_connections_acs_leaves_the_login_to_its_owner(sec: Setup) -> None:
    p = sec.begin("acme")
    response = _response(sec, p)
    r = sec.post("globex", "okta", response, p.relay_state)
    assert 400 <= r.status_code < 500 and "code=" not in r.headers.get("Location", "")
    assert sec.failures("globex")[0]["reason"] == "login_transaction_mismatch"
    r = sec.post("acme", "okta", response, p.relay_state)
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"]), r.data[:300]


def test_a_finished_login_cannot_be_finished_again_from_another_browser(sec: Setup) -> None:
    p = sec.begin()
    response = _response(sec, p)
    assert sec.post("acme", "okta", response, p.relay_state).status_code == 302
    stranger = sec.app.test_client()
    r = stranger.post("/t/acme/connections/okta/saml/acs",
                      data={"SAMLResponse": to_post_binding(response), "RelayState": p.relay_state})
    assert 400 <= r.status_code < 500 and "code=" not in r.headers.get("Location", "")


def test_a_transaction_stored_in_the_earlier_field_order_still_completes(sec: Setup) -> None:
    """Rolling upgrade: a login begun on a replica that stored its transaction as plain asdict() JSON (owner
    fields not first) finishes here for its owner, and is still refused to a stranger without being consumed."""
    import json

    from broker.login import TXN_PREFIX

    p = sec.begin()
    state = sec.app.extensions["broker"].state
    raw = state.get(TXN_PREFIX + p.relay_state)
    data = json.loads(raw)
    legacy = {k: data[k] for k in ("id", "tenant_id", "tenant_slug", "connection_id", "connection_slug",
                                   "request", "upstream", "browser_binding", "created_at", "expires_at", "purpose")}
    state.put(TXN_PREFIX + p.relay_state, json.dumps(legacy, separators=(",", ":")).encode(), 600)
    response = _response(sec, p)
    stranger = sec.app.test_client()
    r = stranger.post("/t/acme/connections/okta/saml/acs",
                      data={"SAMLResponse": to_post_binding(response), "RelayState": p.relay_state})
    _refused(sec, r, "login_browser_mismatch", redirected=False)
    r = sec.post("acme", "okta", response, p.relay_state)
    assert r.status_code == 302 and "code" in query_of(r.headers["Location"]), r.data[:300]
    assert state.get(TXN_PREFIX + p.relay_state) is None


# --- a single-valued parameter sent twice is never read (parameter pollution) -----------------------------


def _post_pairs(sec: Setup, pairs: list[tuple[str, str]], conn: str = "okta") -> object:
    from werkzeug.datastructures import MultiDict

    return sec.client.post(f"/t/acme/connections/{conn}/saml/acs", data=MultiDict(pairs))


def test_a_repeated_saml_response_fails_the_login_it_belongs_to(sec: Setup) -> None:
    p = sec.begin()
    good = to_post_binding(_response(sec, p))
    r = _post_pairs(sec, [("SAMLResponse", good), ("SAMLResponse", "junk"), ("RelayState", p.relay_state)])
    _refused(sec, r, "saml_response_malformed")  # the transaction is known: back to the app, access_denied
    assert "SAMLResponse" in sec.failures()[0]["details"]["detail"]
    again = sec.post("acme", "okta", good, p.relay_state)  # the refused answer ended that login
    assert again.status_code != 302 or "code" not in query_of(again.headers["Location"])


def test_a_repeated_relay_state_is_an_error_page_and_leaves_the_login_alone(sec: Setup) -> None:
    p = sec.begin()
    good = to_post_binding(_response(sec, p))
    r = _post_pairs(sec, [("SAMLResponse", good), ("RelayState", p.relay_state), ("RelayState", "other")])
    _refused(sec, r, "saml_response_malformed", redirected=False)
    ok = sec.post("acme", "okta", good, p.relay_state)  # nothing was consumed: the real answer still lands
    assert ok.status_code == 302 and "code" in query_of(ok.headers["Location"])


@pytest.mark.parametrize("conn", ["nope", "x" * 300])
def test_an_answer_for_an_unknown_connection_is_404_and_audited(sec: Setup, conn: str) -> None:
    r = _post_pairs(sec, [("SAMLResponse", "x"), ("RelayState", "y")], conn=conn)
    assert r.status_code == 404  # type: ignore[attr-defined]
    event = sec.failures()[0]
    assert event["reason"] == "connection_not_found" and event["details"]["connection"] == conn[:100]


def test_an_unsigned_in_response_to_does_not_make_an_unsolicited_assertion_solicited(sec: Setup) -> None:
    """An IdP-initiated assertion (signed, no InResponseTo in its SubjectConfirmationData) wrapped in an
    unsigned Response that names the attacker's own pending request: the only link to the request is
    unsigned, so the answer is unsolicited, and refused where IdP-initiated sign-in is off."""
    p = sec.begin()
    forged = _response(sec, p, sign_response=False, subject_in_response_to=None)
    r = sec.post("acme", "okta", forged, p.relay_state)
    _refused(sec, r, "saml_unsolicited")
    assert "unsigned" in sec.failures()[0]["details"]["detail"]


def test_a_signed_response_may_carry_the_in_response_to_alone(sec: Setup) -> None:
    """Some IdPs put InResponseTo on the Response only; when that Response is signed, it is vouched for."""
    p = sec.begin()
    ok = sec.post("acme", "okta", _response(sec, p, sign_response=True, subject_in_response_to=None),
                  p.relay_state)
    assert ok.status_code == 302 and "code" in query_of(ok.headers["Location"])


def test_a_login_at_the_idp_when_its_connection_is_disabled_is_refused(sec: Setup) -> None:
    """Disabling a connection stops its logins from the next request on, including one already at the IdP:
    no code, no broker session (which would sign the browser in again once the connection is re-enabled)."""
    p = sec.begin()
    response = _response(sec, p)
    assert sec.admin("PATCH", "/tenants/acme/connections/okta", {"enabled": False}).status_code == 200
    r = sec.post("acme", "okta", response, p.relay_state)
    _refused(sec, r, "connection_disabled")
    assert not any(c.startswith("broker_session=") for c in r.headers.getlist("Set-Cookie"))  # type: ignore[attr-defined]
    assert sec.admin("PATCH", "/tenants/acme/connections/okta", {"enabled": True}).status_code == 200
    app = sec.apps["acme"]
    from urllib.parse import urlencode

    silent = sec.client.get("/t/acme/authorize?" + urlencode({
        "response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT_URI, "scope": "openid",
        "state": "s", "prompt": "none", "connection": "okta"}))
    assert query_of(silent.headers["Location"])["error"] == "login_required"


def test_authorize_names_a_disabled_connection_as_such(sec: Setup) -> None:
    assert sec.admin("PATCH", "/tenants/acme/connections/okta", {"enabled": False}).status_code == 200
    app = sec.apps["acme"]
    from urllib.parse import urlencode

    r = sec.client.get("/t/acme/authorize?" + urlencode({
        "response_type": "code", "client_id": app["client_id"], "redirect_uri": REDIRECT_URI, "scope": "openid",
        "state": "s", "connection": "okta"}))
    assert r.status_code == 302 and "disabled" in query_of(r.headers["Location"])["error_description"]
    assert sec.failures()[0]["reason"] == "connection_disabled"
