"""parse_xml: no DTD, no entities, no network, size and depth caps -- and fast refusals."""

from __future__ import annotations

import time

import pytest

from broker.samlxml.errors import SamlError
from broker.samlxml.parser import MAX_ATTRIBUTES_PER_ELEMENT, MAX_NAMESPACES_IN_SCOPE, parse_xml


def code_of(data: bytes, **kw: int) -> str:
    with pytest.raises(SamlError) as err:
        parse_xml(data, **kw)
    return err.value.code


def test_parses_plain_xml_and_keeps_comments() -> None:
    root = parse_xml(b"<a><!-- c --><b>x</b></a>")
    assert root.tag == "a" and len(root) == 2


def test_xxe_file_passwd_is_refused() -> None:
    doc = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    assert code_of(doc) == "xml_forbidden"


def test_xxe_in_utf16_is_refused_after_parsing() -> None:
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    assert code_of(doc.encode("utf-16")) == "xml_forbidden"


def test_billion_laughs_is_refused_quickly() -> None:
    entities = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    doc = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY l0 "lol">{entities}]><r>&l9;</r>'.encode()
    start = time.perf_counter()
    assert code_of(doc) == "xml_forbidden"
    assert time.perf_counter() - start < 0.5


def test_external_dtd_is_refused() -> None:
    doc = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://attacker.example/evil.dtd"><r/>'
    assert code_of(doc) == "xml_forbidden"


def test_undeclared_entity_is_malformed() -> None:
    assert code_of(b"<r>&x;</r>") == "xml_malformed"


def test_oversize_is_refused() -> None:
    assert code_of(b"<r>" + b"x" * 2048 + b"</r>", max_bytes=1024) == "xml_too_large"


def test_too_deep_is_refused() -> None:
    assert code_of(b"<a>" * 129 + b"</a>" * 129) == "xml_too_large"
    assert parse_xml(b"<a>" * 128 + b"</a>" * 128).tag == "a"


@pytest.mark.parametrize("data", [b"", b"   ", b"<a>", b"not xml", b"\x00\x01"])
def test_malformed_is_refused(data: bytes) -> None:
    assert code_of(data) == "xml_malformed"


def test_non_bytes_is_refused() -> None:
    assert code_of("<a/>") == "xml_malformed"  # type: ignore[arg-type]


# --- what makes canonicalization slow (quadratic and worse in libxml2) ----------------------------


def _namespaced(n: int, m: int) -> bytes:
    declarations = " ".join(f'xmlns:n{i}="urn:n{i}"' for i in range(n))
    return f'<r xmlns:a="urn:a"><s {declarations}><x xmlns="urn:x">{"<v/>" * m}</x></s></r>'.encode()


def test_too_many_namespaces_in_scope_are_refused() -> None:
    """700 declarations over 700 elements took 6 s to verify (Inclusive C14N) before this limit."""
    parse_xml(_namespaced(MAX_NAMESPACES_IN_SCOPE - 2, 10))  # r's and x's declarations make it exactly the limit
    for n in (MAX_NAMESPACES_IN_SCOPE - 1, 700):
        with pytest.raises(SamlError) as err:
            parse_xml(_namespaced(n, 10))
        assert err.value.code == "xml_too_large" and "namespaces" in err.value.message


def test_a_prefix_declared_again_on_each_element_does_not_add_up_across_siblings() -> None:
    """Okta declares xs and xsi on every AttributeValue: in scope only below that element."""
    values = "".join('<v xmlns:xs="urn:xs" xmlns:xsi="urn:xsi" xsi:type="xs:string">g</v>' for _ in range(500))
    parse_xml(f'<r xmlns:a="urn:a">{values}</r>'.encode())


def test_the_namespace_node_budget_is_optional_and_bounds_the_whole_document() -> None:
    doc = _namespaced(10, 20_000)  # 12 namespaces in scope of each of 20,000 elements
    parse_xml(doc)  # metadata aggregates are not canonicalized: no budget
    with pytest.raises(SamlError) as err:
        parse_xml(doc, max_namespace_nodes=100_000)
    assert err.value.code == "xml_too_large"


def test_an_element_with_too_many_attributes_is_refused() -> None:
    """40,000 attributes on one element took 8 s to canonicalize (libxml2 sorts them)."""
    parse_xml(("<r " + " ".join(f'a{i}="1"' for i in range(MAX_ATTRIBUTES_PER_ELEMENT)) + "/>").encode())
    with pytest.raises(SamlError) as err:
        parse_xml(("<r " + " ".join(f'a{i}="1"' for i in range(40_000)) + "/>").encode())
    assert err.value.code == "xml_too_large" and "attributes" in err.value.message
