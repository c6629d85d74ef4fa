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
# libxml2 sorts an element's attributes, and its in-scope namespaces against every ancestor's, when it
# canonicalizes (quadratic and worse): a 20 KB document with 700 namespace declarations took 6 s to verify,
# one element with 40,000 attributes 8 s. Real SAML has a handful of each.
MAX_ATTRIBUTES_PER_ELEMENT = 64
MAX_NAMESPACES_IN_SCOPE = 32

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
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
    max_namespace_nodes: int | None = None,
) -> etree._Element:
    """Parse untrusted XML into an element tree, refusing anything with a DTD.

    Raises SamlError: ``xml_too_large`` (more than `max_bytes`, nested deeper than `max_depth`, an element with
    more than MAX_ATTRIBUTES_PER_ELEMENT attributes or MAX_NAMESPACES_IN_SCOPE namespaces in scope, or, when
    `max_namespace_nodes` is given, more namespace nodes in all — each element's in-scope namespaces, summed:
    what canonicalization works through), ``xml_forbidden`` (a DOCTYPE / internal subset / entity
    declaration: XXE, billion laughs, external DTDs), ``xml_malformed`` (not well-formed, or not bytes).
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
    check_shape(root, max_depth, max_namespace_nodes)
    return root


def check_shape(root: etree._Element, max_depth: int, max_namespace_nodes: int | None) -> None:
    """One walk: nesting depth, attributes per element, namespaces in scope (declarations on the way down,
    counted per prefix declared, so a prefix declared again counts again: an upper bound) and, optionally,
    the namespace nodes of the whole document. The `xml` prefix is always in scope and not counted."""
    depth = 0
    in_scope = 0
    declared: list[int] = []  # declarations made by each open element
    pending = 0  # start-ns events come before their element's start event
    nodes = 0
    for event, node in etree.iterwalk(root, events=("start-ns", "start", "end")):
        if event == "start-ns":
            pending += 1
            continue
        if event == "start":
            depth += 1
            if depth > max_depth:
                raise _too_large("The XML document is too deeply nested.", f"nesting depth > {max_depth}")
            in_scope += pending
            declared.append(pending)
            pending = 0
            if in_scope > MAX_NAMESPACES_IN_SCOPE:
                raise _too_large("The XML document declares too many namespaces.",
                                 f"more than {MAX_NAMESPACES_IN_SCOPE} namespaces in scope")
            if len(node.attrib) > MAX_ATTRIBUTES_PER_ELEMENT:
                raise _too_large("The XML document has an element with too many attributes.",
                                 f"more than {MAX_ATTRIBUTES_PER_ELEMENT} attributes on one element")
            nodes += in_scope
            if max_namespace_nodes is not None and nodes > max_namespace_nodes:
                raise _too_large("The XML document is too large.",
                                 f"more than {max_namespace_nodes} namespace nodes")
        else:
            depth -= 1
            in_scope -= declared.pop()


def _too_large(message: str, detail: str) -> SamlError:
    return SamlError("xml_too_large", message, detail)
