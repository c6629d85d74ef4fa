"""The one hardened lxml parser for XML from anyone: no DTD, no entities, no network, size and depth caps.

Every byte of SAML XML (responses, metadata) enters the broker through :func:`parse_xml`. Comments are
kept on purpose: signature canonicalization drops them, so readers must see them to refuse
comment-injection tricks (see ``response.py``).
"""

from __future__ import annotations

from lxml import etree

from .errors import SamlError

DEFAULT_MAX_BYTES = 512 * 1024
DEFAULT_MAX_DEPTH = 128

# Markup that only appears inside a document type declaration. XML requires these in upper case.
_DTD_MARKERS = (b"<!DOCTYPE", b"<!ENTITY", b"<!ELEMENT", b"<!ATTLIST", b"<!NOTATION")


def _make_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=False,
        remove_blank_text=False,
        strip_cdata=True,
        collect_ids=True,
    )


def parse_xml(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> etree._Element:
    """Parse untrusted XML into an element tree, refusing anything with a DTD.

    Raises SamlError: ``xml_too_large`` (more than `max_bytes`, or nested deeper than `max_depth`),
    ``xml_forbidden`` (a DOCTYPE / internal subset / entity declaration: XXE, billion laughs,
    external DTDs), ``xml_malformed`` (not well-formed, or not bytes).
    """
    if not isinstance(data, bytes | bytearray):
        raise SamlError("xml_malformed", "The XML document could not be read.", "input is not bytes")
    if len(data) > max_bytes:
        raise SamlError(
            "xml_too_large", "The XML document is too large.", f"{len(data)} bytes > limit {max_bytes}"
        )
    if not data.strip():
        raise SamlError("xml_malformed", "The XML document could not be read.", "empty document")
    # Fast path for the common encodings: refuse DTD markup before libxml2 sees it.
    for marker in _DTD_MARKERS:
        if marker in data:
            raise SamlError(
                "xml_forbidden",
                "The XML document uses forbidden constructs.",
                f"document contains {marker.decode()}",
            )
    try:
        root = etree.fromstring(bytes(data), parser=_make_parser())
    except etree.XMLSyntaxError as exc:
        raise SamlError("xml_malformed", "The XML document could not be read.", str(exc)) from None
    # Second line of defence (e.g. UTF-16 input that the byte scan above cannot see).
    docinfo: etree.DocInfo = root.getroottree().docinfo
    if (
        docinfo.internalDTD is not None
        or docinfo.externalDTD is not None
        or docinfo.public_id
        or docinfo.system_url
    ):
        raise SamlError("xml_forbidden", "The XML document uses forbidden constructs.", "DOCTYPE present")
    _check_depth(root, max_depth)
    return root


def _check_depth(root: etree._Element, max_depth: int) -> None:
    depth = 0
    for event, _node in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            depth += 1
            if depth > max_depth:
                raise SamlError(
                    "xml_too_large",
                    "The XML document is too deeply nested.",
                    f"nesting depth > {max_depth}",
                )
        else:
            depth -= 1
