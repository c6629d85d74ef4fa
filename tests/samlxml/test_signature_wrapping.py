"""XML signature wrapping (XSW): a verified signature must cover the very assertion whose values are used.

Each test takes a genuinely signed Response and moves nodes around the way published XSW attacks do
(Somorovsky et al., "On Breaking SAML", 2012; dex's TestTwoAssertionFirstSigned and friends).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from lxml import etree

from broker.samlxml.errors import SamlError
from broker.samlxml.response import ResponseExpectations, verify_response

from .conftest import ACS, NOW, REQUEST_ID, SP
from .idp_fixtures import Idp, build_response

Expect = Callable[..., ResponseExpectations]
P = "{urn:oasis:names:tc:SAML:2.0:protocol}"
A = "{urn:oasis:names:tc:SAML:2.0:assertion}"
DS = "{http://www.w3.org/2000/09/xmldsig#}"


def signed_root(idp: Idp, *, sign_response: bool = False, sign_assertion: bool = True) -> etree._Element:
    xml = build_response(
        idp,
        acs_url=ACS,
        audience=SP,
        in_response_to=REQUEST_ID,
        issue_instant=NOW,
        style="generic",
        name_id="victim@example.com",
        sign_response=sign_response,
        sign_assertion=sign_assertion,
    )
    return etree.fromstring(xml)


def evil_copy(
    assertion: etree._Element, *, new_id: str | None = "_evil", keep_signature: bool = False
) -> etree._Element:
    evil = copy.deepcopy(assertion)
    if new_id is not None:
        evil.set("ID", new_id)
    name_id = evil.find(f"{A}Subject/{A}NameID")
    assert name_id is not None
    name_id.text = "attacker@evil.example"
    if not keep_signature:
        for sig in evil.findall(f"{DS}Signature"):
            evil.remove(sig)
    return evil


def refused(root: etree._Element, exp: ResponseExpectations) -> str:
    with pytest.raises(SamlError) as err:
        verify_response(etree.tostring(root), exp)
    return err.value.code


def the_assertion(root: etree._Element) -> etree._Element:
    a = root.find(f"{A}Assertion")
    assert a is not None
    return a


def test_control_untouched_response_verifies(idp: Idp, expect: Expect) -> None:
    assert verify_response(etree.tostring(signed_root(idp)), expect()).name_id == "victim@example.com"


def test_evil_assertion_before_the_signed_one(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    signed.addprevious(evil_copy(signed))
    assert refused(root, expect()) == "saml_multiple_assertions"


def test_evil_assertion_after_the_signed_one(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    signed.addnext(evil_copy(signed))
    assert refused(root, expect()) == "saml_multiple_assertions"


def test_signed_assertion_moved_into_extensions(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    evil = evil_copy(signed, new_id=None, keep_signature=True)  # same ID, original signature copied
    root.replace(signed, evil)
    extensions = etree.Element(f"{P}Extensions")
    extensions.append(signed)
    root.insert(1, extensions)
    assert refused(root, expect()) == "saml_signature_wrapping"


def test_signed_assertion_moved_into_extensions_with_fresh_evil_id(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    evil = evil_copy(signed, keep_signature=True)
    root.replace(signed, evil)
    extensions = etree.Element(f"{P}Extensions")
    extensions.append(signed)
    root.insert(1, extensions)
    assert refused(root, expect()) == "saml_signature_wrapping"


def test_signed_assertion_moved_into_signature_object(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    evil = evil_copy(signed, keep_signature=True)
    root.replace(signed, evil)
    sig = evil.find(f"{DS}Signature")
    assert sig is not None
    obj = etree.SubElement(sig, f"{DS}Object")
    obj.append(signed)
    assert refused(root, expect()) == "saml_signature_wrapping"


def test_signed_assertion_wrapped_inside_evil_assertion(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    evil = evil_copy(signed)
    root.replace(signed, evil)
    evil.append(signed)
    assert refused(root, expect()) == "saml_signature_wrapping"


def test_response_signature_with_injected_unsigned_assertion(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp, sign_response=True, sign_assertion=False)
    signed = the_assertion(root)
    signed.addprevious(evil_copy(signed))
    assert refused(root, expect(want_assertions_signed=False)) == "saml_multiple_assertions"


def test_response_signature_with_replaced_unsigned_assertion(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp, sign_response=True, sign_assertion=False)
    signed = the_assertion(root)
    root.replace(signed, evil_copy(signed, new_id=None))
    assert refused(root, expect(want_assertions_signed=False)) == "saml_signature_invalid"


def test_response_signature_with_signed_response_hidden_in_extensions(idp: Idp, expect: Expect) -> None:
    """XSW1-style: evil Response wraps the original signed Response."""
    original = signed_root(idp, sign_response=True, sign_assertion=False)
    evil = copy.deepcopy(original)
    evil.set("ID", "_evil-response")
    assertion = the_assertion(evil)
    evil.replace(assertion, evil_copy(assertion))
    for sig in evil.findall(f"{DS}Signature"):
        sig.addprevious(etree.Element(f"{P}Extensions"))
        ext = sig.getprevious()
        assert ext is not None
        evil.remove(sig)
        ext.append(original)
        original.append(sig)
    assert refused(evil, expect(want_assertions_signed=False)) == "saml_signature_wrapping"


def test_duplicate_ids(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    status = root.find(f"{P}Status")
    assert status is not None
    status.set("ID", signed.get("ID", ""))  # a look-alike target for the reference resolver
    assert refused(root, expect()) == "saml_signature_wrapping"


def test_reference_to_a_different_id(idp: Idp, expect: Expect) -> None:
    """The evil assertion carries the genuine signature, whose Reference names the original's ID."""
    root = signed_root(idp)
    signed = the_assertion(root)
    evil = evil_copy(signed, keep_signature=True)
    root.replace(signed, evil)
    assert refused(root, expect()) == "saml_signature_wrapping"


def test_reference_rewritten_to_the_evil_id_fails_the_digest(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    evil = evil_copy(signed, keep_signature=True)
    ref = evil.find(f"{DS}Signature/{DS}SignedInfo/{DS}Reference")
    assert ref is not None
    ref.set("URI", "#_evil")
    root.replace(signed, evil)
    assert refused(root, expect()) == "saml_signature_invalid"


def test_assertion_signature_moved_to_response(idp: Idp, expect: Expect) -> None:
    """The assertion's signature placed on the Response: its reference names the assertion, not its parent."""
    root = signed_root(idp)
    signed = the_assertion(root)
    sig = signed.find(f"{DS}Signature")
    assert sig is not None
    root.insert(1, sig)
    assert refused(root, expect(want_assertions_signed=False)) == "saml_signature_wrapping"


def test_two_signatures_on_one_assertion(idp: Idp, expect: Expect) -> None:
    root = signed_root(idp)
    signed = the_assertion(root)
    sig = signed.find(f"{DS}Signature")
    assert sig is not None
    sig.addnext(copy.deepcopy(sig))
    assert refused(root, expect()) == "saml_signature_wrapping"
