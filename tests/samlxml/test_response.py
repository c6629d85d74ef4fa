"""verify_response: happy paths per IdP style, encryption, key rollover, and every check's refusal."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from lxml import etree

from broker.samlxml.errors import SamlError
from broker.samlxml.response import (
    ResponseExpectations,
    VerifiedAssertion,
    decode_post_binding,
    parse_instant,
    verify_response,
)

from .conftest import ACS, NOW, REQUEST_ID, SP
from .idp_fixtures import (
    CLAIMS,
    PERSISTENT_FORMAT,
    Idp,
    build_response,
    encrypt_assertion,
    make_idp,
    to_post_binding,
)

Expect = Callable[..., ResponseExpectations]


def make(idp: Idp, **kw: Any) -> bytes:
    kw.setdefault("acs_url", ACS)
    kw.setdefault("audience", SP)
    kw.setdefault("in_response_to", REQUEST_ID)
    kw.setdefault("issue_instant", NOW)
    return build_response(idp, **kw)


def refused(xml: bytes, exp: ResponseExpectations) -> str:
    with pytest.raises(SamlError) as err:
        verify_response(xml, exp)
    assert err.value.message and err.value.code not in err.value.message
    return err.value.code


# --- happy paths -------------------------------------------------------------------------------


def test_okta_style_response_and_assertion_signed(idp: Idp, expect: Expect) -> None:
    result = verify_response(make(idp, style="okta", name_id="alice@example.com"), expect())
    assert isinstance(result, VerifiedAssertion)
    assert result.signed_response and result.signed_assertion and not result.encrypted
    assert result.issuer == idp.entity_id
    assert result.in_response_to == REQUEST_ID
    assert result.name_id == "alice@example.com"
    assert result.attributes["email"] == ("alice@example.com",)
    assert result.attributes["groups"] == ("Admins", "Everyone")
    assert result.attributes["firstName"] == ("Alice",)
    assert result.session_index == "_session-1"
    assert (
        result.authn_context_class_ref == "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
    )
    assert result.authn_instant == NOW - 1
    assert result.not_on_or_after == NOW + 300
    assert result.warnings == ()


def test_entra_style_only_assertion_signed_idp_initiated(idp: Idp, expect: Expect) -> None:
    xml = make(idp, style="entra", in_response_to=None)
    result = verify_response(xml, expect(in_response_to=None, allow_unsolicited=True))
    assert not result.signed_response and result.signed_assertion
    assert result.in_response_to is None
    assert result.attributes[CLAIMS + "emailaddress"] == ("alice@example.com",)


def test_ping_style_unsigned_response_without_destination(idp: Idp, expect: Expect) -> None:
    xml = make(idp, style="ping", name_id="u1", name_id_format=PERSISTENT_FORMAT)
    assert b"Destination=" not in xml
    result = verify_response(xml, expect())
    assert result.name_id == "u1" and result.name_id_format == PERSISTENT_FORMAT
    assert result.attributes["memberOf"] == ("Admins,Users",)


def test_adfs_style_response_signed_only_when_assertions_need_not_be_signed(idp: Idp, expect: Expect) -> None:
    xml = make(idp, sign_response=True, sign_assertion=False)
    result = verify_response(xml, expect(want_assertions_signed=False))
    assert result.signed_response and not result.signed_assertion


@pytest.mark.parametrize("alg", ["aes256-gcm", "aes128-gcm", "aes256-cbc", "aes128-cbc"])
@pytest.mark.parametrize("detached", [False, True], ids=["inline-key", "okta-detached-key"])
def test_encrypted_assertion_decrypts(
    idp: Idp, expect: Expect, sp_key: tuple[bytes, str], alg: str, detached: bool
) -> None:
    xml = make(idp, encrypt_to_cert_pem=sp_key[1], data_encryption=alg, detached_encrypted_key=detached)
    assert b"alice@example.com" not in xml
    result = verify_response(xml, expect())
    assert result.encrypted and result.signed_assertion and result.signed_response
    assert result.name_id == "alice@example.com"


def test_encrypted_unsigned_assertion_covered_by_response_signature(
    idp: Idp, expect: Expect, sp_key: tuple[bytes, str]
) -> None:
    xml = make(idp, encrypt_to_cert_pem=sp_key[1], sign_assertion=False, sign_response=True)
    assert verify_response(xml, expect(want_assertions_signed=False)).encrypted
    assert refused(xml, expect()) == "saml_signature_missing"


def _encrypted_with_inner(idp: Idp, sp_cert_pem: str, widen: Callable[[etree._Element], None]) -> bytes:
    """A Response (unsigned) carrying an EncryptedAssertion whose plaintext `widen` has changed after signing:
    what anyone holding the SP's public encryption certificate can send."""
    resp = etree.fromstring(make(idp, sign_response=False))
    assertion = resp.find("{urn:oasis:names:tc:SAML:2.0:assertion}Assertion")
    assert assertion is not None
    widen(assertion)
    resp.replace(assertion, encrypt_assertion(assertion, sp_cert_pem))
    return etree.tostring(resp)


def _many_namespaces(assertion: etree._Element) -> None:
    conditions = assertion.find("{urn:oasis:names:tc:SAML:2.0:assertion}Conditions")
    assert conditions is not None
    wide = etree.Element(conditions.tag, attrib=dict(conditions.attrib),
                         nsmap={f"n{i}": f"urn:example:n{i}" for i in range(40)})
    wide.extend(list(conditions))
    assertion.replace(conditions, wide)


def _many_attributes(assertion: etree._Element) -> None:
    subject = assertion.find("{urn:oasis:names:tc:SAML:2.0:assertion}Subject")
    assert subject is not None
    for i in range(100):
        subject.set(f"a{i}", "x")


@pytest.mark.parametrize("widen", [_many_namespaces, _many_attributes], ids=["namespaces", "attributes"])
def test_decrypted_assertion_gets_the_same_shape_limits(
    idp: Idp, expect: Expect, sp_key: tuple[bytes, str], widen: Callable[[etree._Element], None]
) -> None:
    """The encrypted blob hides the plaintext's shape from the first parse: the limits that keep
    canonicalization cheap are applied again to what decryption produced, before any signature work."""
    xml = _encrypted_with_inner(idp, sp_key[1], widen)
    etree.fromstring(xml)  # the outer document itself is small and well within the limits
    assert refused(xml, expect()) == "xml_too_large"


def test_encrypted_assertion_without_any_signature_is_refused(
    idp: Idp, expect: Expect, sp_key: tuple[bytes, str]
) -> None:
    """Anyone can encrypt to our public certificate: encryption is not authentication."""
    xml = make(idp, encrypt_to_cert_pem=sp_key[1], sign_assertion=False, sign_response=False)
    assert refused(xml, expect(want_assertions_signed=False)) == "saml_signature_missing"


def test_encrypted_assertion_without_sp_key_fails(
    idp: Idp, expect: Expect, sp_key: tuple[bytes, str]
) -> None:
    xml = make(idp, encrypt_to_cert_pem=sp_key[1])
    assert refused(xml, expect(sp_decryption_keys=())) == "saml_decryption_failed"


@pytest.mark.parametrize("kw", [{"data_encryption": "tripledes-cbc"}, {"key_transport": "rsa-1_5"}])
def test_legacy_encryption_only_when_allowed(
    idp: Idp, expect: Expect, sp_key: tuple[bytes, str], kw: dict[str, str]
) -> None:
    xml = make(idp, encrypt_to_cert_pem=sp_key[1], **kw)
    assert refused(xml, expect()) == "saml_algorithm_refused"
    assert verify_response(xml, expect(allow_legacy_encryption=True)).encrypted


def test_key_rollover_second_certificate_verifies(idp: Idp, expect: Expect) -> None:
    old = make_idp("https://old-key.example.test")
    xml = make(idp)
    assert verify_response(xml, expect(idp_certificates=(old.cert_pem, idp.cert_pem))).signed_assertion
    assert verify_response(xml, expect(idp_certificates=(idp.cert_pem, old.cert_pem))).signed_assertion


def test_ecdsa_signed_response(expect: Expect) -> None:
    ec_idp = make_idp("https://ec.example.test", key_type="ec")
    xml = make(ec_idp, signature_algorithm="ecdsa-sha256")
    exp = expect(idp_entity_id=ec_idp.entity_id, idp_certificates=(ec_idp.cert_pem,))
    assert verify_response(xml, exp).signed_response


def test_repeated_attribute_elements_merge(idp: Idp, expect: Expect) -> None:
    xml = make(idp, style="entra", sign_response=False)
    root = etree.fromstring(xml)
    # keycloak style: one <Attribute Name="Role"> per value -- built unsigned then signed by the fixture
    xml = make(idp, attributes={"Role": ["a", "b"]})
    assert verify_response(xml, expect()).attributes["Role"] == ("a", "b")
    assert root is not None


def test_sha1_refused_by_default_and_warned_when_allowed(idp: Idp, expect: Expect) -> None:
    xml = make(idp, signature_algorithm="rsa-sha1", digest_algorithm="sha1")
    assert refused(xml, expect()) == "saml_algorithm_refused"
    result = verify_response(xml, expect(allow_sha1=True))
    assert "sha1_signature" in result.warnings


def test_sha1_digest_alone_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, signature_algorithm="rsa-sha256", digest_algorithm="sha1")
    assert refused(xml, expect()) == "saml_algorithm_refused"


# --- time window -------------------------------------------------------------------------------


def test_expired_response_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp)
    assert verify_response(xml, expect(now=NOW + 300 + 120 - 0.001)).assertion_id
    assert refused(xml, expect(now=NOW + 300 + 120)) == "saml_expired"
    assert refused(xml, expect(now=NOW + 300 + 121)) == "saml_expired"


def test_subject_confirmation_expiry_is_checked_separately(idp: Idp, expect: Expect) -> None:
    xml = make(idp, subject_not_on_or_after_offset=10)
    assert refused(xml, expect(now=NOW + 10 + 121)) == "saml_expired"
    assert verify_response(xml, expect(now=NOW)).not_on_or_after == NOW + 10


def test_not_yet_valid_response_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, not_before_offset=0)
    assert verify_response(xml, expect(now=NOW - 120)).assertion_id  # inclusive start, with skew
    assert refused(xml, expect(now=NOW - 121)) == "saml_not_yet_valid"


def test_an_assertion_issued_in_the_future_is_refused_even_within_its_conditions(idp: Idp, expect: Expect) -> None:
    """Conditions that cover now do not make a document dated an hour ahead plausible: its IssueInstant
    must not be later than now (with the skew)."""
    xml = make(idp, issue_instant=NOW + 3600, not_before_offset=-3700, not_on_or_after_offset=400)
    assert refused(xml, expect(now=NOW)) == "saml_not_yet_valid"
    assert verify_response(xml, expect(now=NOW + 3600 - 120)).assertion_id  # within the skew: accepted


def test_fractional_seconds_parse() -> None:
    assert parse_instant("2017-09-21T23:27:06.828Z") == pytest.approx(1506036426.828)
    assert parse_instant("2017-09-21T23:27:06.8281234567Z") == pytest.approx(1506036426.8281234)
    assert parse_instant("2017-09-21T23:27:06Z") == 1506036426
    assert parse_instant("2017-09-22T01:27:06+02:00") == 1506036426
    with pytest.raises(SamlError) as err:
        parse_instant("yesterday")
    assert err.value.code == "saml_response_malformed"
    assert parse_instant("2024-02-29T00:00:00-14:00") == 1709215200
    assert parse_instant("9999-12-31T23:59:59-01:00") == 253402304399


@pytest.mark.parametrize("value", [
    "0000-01-01T00:00:00Z",  # no year 0 (was a 500: calendar.timegm)
    "2026-02-31T00:00:00Z", "2025-02-29T00:00:00Z",  # no such day (was moved into March)
    "2026-01-01T00:00:00+99:59", "2026-01-01T00:00:00+14:01", "2026-01-01T00:00:00+01:60",  # beyond ±14:00
    "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",  # Arabic-Indic digits
    "2026-01-01T24:00:00Z", "2026-01-01T00:00:00z", "",
])
def test_impossible_timestamps_are_malformed_not_errors(value: str) -> None:
    with pytest.raises(SamlError) as err:
        parse_instant(value)
    assert err.value.code == "saml_response_malformed"


def test_an_assertion_that_is_not_saml_2_0_is_refused(idp: Idp, expect: Expect,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """core 2.3.3: Version "2.0"; the Assertion says Version="1.1" before the IdP signs it."""
    from tests.samlxml import idp_fixtures

    sign = idp_fixtures.sign_element

    def as_saml_1_1(element: etree._Element, signer: Idp, **kw: Any) -> etree._Element:
        if element.tag.endswith("}Assertion"):
            element.set("Version", "1.1")
        return sign(element, signer, **kw)

    monkeypatch.setattr(idp_fixtures, "sign_element", as_saml_1_1)
    assert refused(make(idp, style="entra"), expect()) == "saml_response_malformed"


# --- who, where, for whom --------------------------------------------------------------------------


def test_wrong_audience_is_refused(idp: Idp, expect: Expect) -> None:
    assert refused(make(idp, audience="https://other-sp.example.test"), expect()) == "saml_audience_mismatch"


def test_wrong_recipient_is_refused(idp: Idp, expect: Expect) -> None:
    assert (
        refused(make(idp, recipient="https://evil.example.test/acs"), expect()) == "saml_recipient_mismatch"
    )


def test_wrong_destination_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, destination="https://other.example.test/acs")
    assert refused(xml, expect()) == "saml_destination_mismatch"


def test_signed_response_without_destination_is_refused(idp: Idp, expect: Expect) -> None:
    """bindings 3.5.5.2: Destination may be absent only when the Response is unsigned."""
    assert refused(make(idp, destination=None, sign_response=True), expect()) == "saml_destination_mismatch"


def test_wrong_assertion_issuer_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, issuer="https://other-idp.example.test", response_issuer=idp.entity_id)
    assert refused(xml, expect()) == "saml_issuer_mismatch"


def test_wrong_response_issuer_is_refused(idp: Idp, expect: Expect) -> None:
    assert (
        refused(make(idp, response_issuer="https://other-idp.example.test"), expect())
        == "saml_issuer_mismatch"
    )


def test_in_response_to_of_another_request_is_refused(idp: Idp, expect: Expect) -> None:
    assert refused(make(idp, in_response_to="_another-request"), expect()) == "saml_in_response_to_mismatch"


def test_subject_confirmation_in_response_to_of_another_request_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, subject_in_response_to="_another-request")
    assert refused(xml, expect()) == "saml_in_response_to_mismatch"


def test_solicited_response_without_pending_request_is_refused(idp: Idp, expect: Expect) -> None:
    exp = expect(in_response_to=None, allow_unsolicited=True)
    assert refused(make(idp), exp) == "saml_in_response_to_mismatch"


def test_unsolicited_response_refused_when_not_allowed(idp: Idp, expect: Expect) -> None:
    xml = make(idp, in_response_to=None)
    assert refused(xml, expect(in_response_to=None)) == "saml_unsolicited"
    assert refused(xml, expect()) == "saml_unsolicited"  # pending request elsewhere: still unsolicited
    assert verify_response(xml, expect(allow_unsolicited=True)).in_response_to is None


def test_non_success_status_is_refused_with_codes_in_detail(idp: Idp, expect: Expect) -> None:
    xml = make(
        idp,
        status_code="urn:oasis:names:tc:SAML:2.0:status:Responder",
        second_status_code="urn:oasis:names:tc:SAML:2.0:status:AuthnFailed",
    )
    with pytest.raises(SamlError) as err:
        verify_response(xml, expect())
    assert err.value.code == "saml_status"
    assert (
        err.value.detail is not None and "AuthnFailed" in err.value.detail and "Responder" in err.value.detail
    )


def test_no_bearer_subject_confirmation_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, confirmation_method="urn:oasis:names:tc:SAML:2.0:cm:holder-of-key")
    assert refused(xml, expect()) == "saml_subject_confirmation_invalid"


# --- signatures ------------------------------------------------------------------------------------


def test_unsigned_response_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, sign_response=False, sign_assertion=False)
    assert refused(xml, expect()) == "saml_signature_missing"
    assert refused(xml, expect(want_assertions_signed=False)) == "saml_signature_missing"
    with pytest.raises(SamlError) as err:
        verify_response(xml, expect())
    assert "not signed" in err.value.message and "assertion in it" not in err.value.message


def test_a_signed_response_with_an_unsigned_assertion_says_which_is_missing(idp: Idp, expect: Expect) -> None:
    xml = make(idp, sign_response=True, sign_assertion=False)
    with pytest.raises(SamlError) as err:
        verify_response(xml, expect())
    assert err.value.code == "saml_signature_missing"
    assert "signed the response but not the assertion" in err.value.message
    assert verify_response(xml, expect(want_assertions_signed=False)).name_id


def test_response_signed_by_another_key_is_refused(idp: Idp, attacker: Idp, expect: Expect) -> None:
    xml = make(idp, signer=attacker)
    assert refused(xml, expect()) == "saml_signature_invalid"


def test_attacker_certificate_in_keyinfo_is_ignored(idp: Idp, attacker: Idp, expect: Expect) -> None:
    """The attacker signs with its own key and ships its own certificate in KeyInfo: still refused."""
    xml = make(idp, signer=attacker, sign_response=False)
    attacker_b64 = "".join(attacker.cert_pem.splitlines()[1:-1]).encode()
    assert attacker_b64 in b"".join(xml.split())  # KeyInfo carries the attacker's certificate
    assert refused(xml, expect()) == "saml_signature_invalid"
    assert refused(xml, expect(want_assertions_signed=False)) == "saml_signature_invalid"


def test_tampered_attribute_breaks_the_signature(idp: Idp, expect: Expect) -> None:
    xml = make(idp, sign_response=False).replace(b"Admins", b"Owners")
    assert refused(xml, expect()) == "saml_signature_invalid"


def test_tampered_signed_response_envelope_is_refused(idp: Idp, expect: Expect) -> None:
    """Response signature broken, Assertion signature fine: tolerated (Okta quirk) with a warning."""
    xml = make(idp).replace(b'Version="2.0" IssueInstant', b'Version="2.0" Consent="x" IssueInstant', 1)
    result = verify_response(xml, expect())
    assert "response_signature_invalid" in result.warnings and not result.signed_response
    assert "response_signature_invalid" in verify_response(xml, expect(want_assertions_signed=False)).warnings
    # ...but when only the Response signature would vouch for the assertion, the failure stands
    xml2 = make(idp, sign_assertion=False).replace(
        b'Version="2.0" IssueInstant', b'Version="2.0" Consent="x" IssueInstant', 1
    )
    assert refused(xml2, expect(want_assertions_signed=False)) == "saml_signature_invalid"


def test_no_trusted_certificates_is_refused(idp: Idp, expect: Expect) -> None:
    assert refused(make(idp), expect(idp_certificates=())) == "saml_signature_invalid"


# --- comment injection -------------------------------------------------------------------------------


def test_name_id_comment_injection_is_refused(idp: Idp, expect: Expect) -> None:
    """`user@evil.com<!---->.trusted.com`: c14n drops the comment, so the signature still verifies."""
    xml = make(idp, name_id="user@evil.com.trusted.com", sign_response=False)
    injected = xml.replace(b"user@evil.com.trusted.com", b"user@evil.com<!---->.trusted.com")
    assert injected != xml
    code = refused(injected, expect())
    assert code == "xml_forbidden"


def test_attribute_value_comment_injection_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, attributes={"email": ["admin@trusted.com.evil.example"]}, sign_response=False)
    injected = xml.replace(b"admin@trusted.com.evil.example", b"admin@trusted.com<!---->.evil.example")
    assert refused(injected, expect()) == "xml_forbidden"


def test_processing_instruction_is_refused(idp: Idp, expect: Expect) -> None:
    xml = make(idp, sign_response=False).replace(b"<saml2:Subject>", b"<?evil x?><saml2:Subject>", 1)
    assert refused(xml, expect()) == "xml_forbidden"


# --- structure -------------------------------------------------------------------------------------


def test_not_a_response_is_refused(expect: Expect) -> None:
    xml = b'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="x" Version="2.0"/>'
    assert refused(xml, expect()) == "saml_response_malformed"


def test_response_without_assertion_is_refused(idp: Idp, expect: Expect) -> None:
    root = etree.fromstring(make(idp, sign_response=False))
    root.remove(root[-1])
    assert refused(etree.tostring(root), expect()) == "saml_no_assertion"


def test_xxe_in_response_is_refused(expect: Expect) -> None:
    xml = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&x;</samlp:Response>'
    )
    assert refused(xml, expect()) == "xml_forbidden"


# --- HTTP-POST binding ------------------------------------------------------------------------------


def test_post_binding_round_trip(idp: Idp, expect: Expect) -> None:
    xml = make(idp)
    assert decode_post_binding(to_post_binding(xml)) == xml
    wrapped = "\r\n".join(to_post_binding(xml)[i : i + 76] for i in range(0, len(to_post_binding(xml)), 76))
    assert decode_post_binding(wrapped) == xml


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not base64 at all!",
        "PHNhbWxwOlJlc3BvbnNl",
        "PHNhbWxwOlJlc3BvbnNl" + "=" * 3,
        "PHNhbWxwOlJlc3BvbnNl$$",
        "é" * 8,
        base64.b64encode(b"\x00\x01binary").decode(),
    ],
    ids=["empty", "garbage", "truncated", "bad-padding", "bad-chars", "non-ascii", "not-xml"],
)
def test_garbage_or_truncated_base64_is_refused(value: str) -> None:
    with pytest.raises(SamlError) as err:
        decode_post_binding(value[:-1] if value.endswith("bnNl") else value)
    assert err.value.code == "saml_response_malformed"


def test_oversize_post_binding_is_refused() -> None:
    big = base64.b64encode(b"<a>" + b"x" * (512 * 1024) + b"</a>").decode()
    with pytest.raises(SamlError) as err:
        decode_post_binding(big)
    assert err.value.code == "xml_too_large"


def test_oversize_response_is_refused(expect: Expect) -> None:
    assert refused(b"<a>" + b" " * (512 * 1024) + b"</a>", expect()) == "xml_too_large"
