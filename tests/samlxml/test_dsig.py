"""verify_signed_element: returns the covered element; algorithm allow-list; our certificates only."""

from __future__ import annotations

import copy

import pytest
from lxml import etree

from broker.samlxml.dsig import VerifiedElement, verify_signed_element
from broker.samlxml.errors import SamlError

from .conftest import ACS, NOW, SP
from .idp_fixtures import Idp, build_response, make_idp

DS = "{http://www.w3.org/2000/09/xmldsig#}"
A = "{urn:oasis:names:tc:SAML:2.0:assertion}"


def assertion_signature(idp: Idp, **kw: object) -> etree._Element:
    xml = build_response(
        idp, acs_url=ACS, audience=SP, in_response_to="x", issue_instant=NOW, sign_response=False, **kw
    )  # type: ignore[arg-type]
    sig = etree.fromstring(xml).find(f"{A}Assertion/{DS}Signature")
    assert sig is not None
    return sig


def code_of(sig: etree._Element, certs: tuple[str, ...], allow_sha1: bool = False) -> str:
    with pytest.raises(SamlError) as err:
        verify_signed_element(sig, certs, allow_sha1=allow_sha1)
    return err.value.code


def test_returns_the_covered_element(idp: Idp) -> None:
    sig = assertion_signature(idp)
    verified = verify_signed_element(sig, [idp.cert_pem], allow_sha1=False)
    assert isinstance(verified, VerifiedElement)
    assert verified.element is sig.getparent()
    assert verified.sha1_used is False and verified.certificate_index == 0


def test_rollover_reports_which_certificate(idp: Idp) -> None:
    other = make_idp("https://other.example.test")
    sig = assertion_signature(idp)
    assert verify_signed_element(sig, [other.cert_pem, idp.cert_pem], allow_sha1=False).certificate_index == 1


def test_wrong_certificate(idp: Idp) -> None:
    assert code_of(assertion_signature(idp), (make_idp("https://other.example.test").cert_pem,)) == (
        "saml_signature_invalid"
    )


def test_garbage_certificate(idp: Idp) -> None:
    assert code_of(assertion_signature(idp), ("not a pem",)) == "saml_signature_invalid"


def test_sha1_flag(idp: Idp) -> None:
    sig = assertion_signature(idp, signature_algorithm="rsa-sha1", digest_algorithm="sha1")
    assert code_of(sig, (idp.cert_pem,)) == "saml_algorithm_refused"
    assert verify_signed_element(sig, [idp.cert_pem], allow_sha1=True).sha1_used


@pytest.mark.parametrize(
    "alg",
    ["http://www.w3.org/TR/1999/REC-xpath-19991116", "http://www.w3.org/TR/1999/REC-xslt-19991116"],
    ids=["xpath", "xslt"],
)
def test_xpath_and_xslt_transforms_are_refused(idp: Idp, alg: str) -> None:
    sig = assertion_signature(idp)
    transforms = sig.find(f"{DS}SignedInfo/{DS}Reference/{DS}Transforms")
    assert transforms is not None
    etree.SubElement(transforms, f"{DS}Transform").set("Algorithm", alg)
    assert code_of(sig, (idp.cert_pem,)) == "saml_algorithm_refused"


def test_hmac_signature_method_is_refused(idp: Idp) -> None:
    sig = assertion_signature(idp)
    method = sig.find(f"{DS}SignedInfo/{DS}SignatureMethod")
    assert method is not None
    method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#hmac-sha1")
    assert code_of(sig, (idp.cert_pem,)) == "saml_algorithm_refused"


def test_two_references_are_refused(idp: Idp) -> None:
    sig = assertion_signature(idp)
    ref = sig.find(f"{DS}SignedInfo/{DS}Reference")
    assert ref is not None
    ref.addnext(copy.deepcopy(ref))
    assert code_of(sig, (idp.cert_pem,)) == "saml_signature_wrapping"


def test_object_in_signature_is_refused(idp: Idp) -> None:
    sig = assertion_signature(idp)
    etree.SubElement(sig, f"{DS}Object")
    assert code_of(sig, (idp.cert_pem,)) == "saml_signature_wrapping"


def test_empty_reference_uri_only_for_the_document_element(idp: Idp) -> None:
    sig = assertion_signature(idp)
    ref = sig.find(f"{DS}SignedInfo/{DS}Reference")
    assert ref is not None
    ref.set("URI", "")
    assert code_of(sig, (idp.cert_pem,)) == "saml_signature_wrapping"


def test_duplicate_ids_are_found_under_every_id_attribute_name() -> None:
    from broker.samlxml.dsig import ID_ATTRIBUTES, find_duplicate_ids

    for first in ID_ATTRIBUTES:
        for second in ID_ATTRIBUTES:
            root = etree.Element("Response")
            inner = etree.SubElement(etree.SubElement(root, "Assertion"), "Subject")
            etree.SubElement(root, "Status").set(first, "_x")
            inner.set(second, "_x")
            root.append(etree.Comment("a comment is no element"))
            assert find_duplicate_ids(root) == ["_x"], (first, second)
            assert find_duplicate_ids(inner) == []  # only the tree under the element asked about
    root = etree.Element("Response", ID="_a")
    etree.SubElement(root, "Assertion", {"ID": "_b", "{urn:other}ID": "_a", "Other": "_b"})
    assert find_duplicate_ids(root) == []  # attributes that are not IDs do not count
    root.append(etree.Element("Evil", Id="_a", AssertionID="_b"))
    assert sorted(find_duplicate_ids(root)) == ["_a", "_b"]


def test_a_certificate_cryptography_cannot_read_is_still_used_whole(
    idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is normally given to xmlsec bare (read from the certificate with cryptography); a certificate
    cryptography refuses but xmlsec reads is used as before, and garbage is still refused."""
    from broker.samlxml import dsig

    def refuse(data: bytes) -> None:
        raise ValueError("unreadable here")

    sig = assertion_signature(idp)  # signed before: the test signer reads certificates with cryptography too
    other = make_idp("https://other.example.test").cert_pem
    dsig._load_certificate_key.cache_clear()
    monkeypatch.setattr(dsig.x509, "load_pem_x509_certificate", refuse)
    try:
        assert verify_signed_element(sig, [idp.cert_pem], allow_sha1=False).certificate_index == 0
        assert code_of(sig, (other,)) == "saml_signature_invalid"
        assert code_of(sig, ("not a pem",)) == "saml_signature_invalid"
    finally:
        dsig._load_certificate_key.cache_clear()

