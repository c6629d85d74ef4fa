"""The stable, opaque `sub`: derived per tenant + connection from an upstream identifier, never the raw email.

Source of the upstream identifier, first one present wins (presets.SUBJECT_SOURCES, or the connection's
`subject_source`, which replaces the list with exactly one source):
- `nameid`: the SAML NameID (OIDC: the upstream `sub`), unless its Format is transient or entity -- a
  transient NameID changes every login and is never a stable subject;
- any other name: that upstream attribute (exact Name, then FriendlyName), its first non-empty value.

Values from sources that are case-insensitive in practice (an emailAddress NameID, UPN, mail, email,
eduPersonPrincipalName) are lowercased so that `Alice@Example.com` and `alice@example.com` are one user;
every other identifier is used exactly as sent.

    sub = base32(SHA-256(len || "broker-sub-v1" || len || tenant_id || len || connection_id || len || value))

(each part UTF-8, prefixed with its length as 8 bytes big-endian; base32 lowercase without padding: 52
characters). The tenant and connection *ids* are used (slugs can be renamed), so the same person through two
connections, or two tenants, gets unrelated subjects. `pairwise_sub` derives a per-app subject from it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from broker.claims.presets import ADFS_UPN, OID_EPPN, OID_MAIL, WS
from broker.model import UpstreamIdentity

NAMEID = "nameid"
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
ENTITY = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
EMAIL_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NOT_A_SUBJECT = frozenset({TRANSIENT, ENTITY})

CASE_INSENSITIVE_SOURCES = frozenset(
    {ADFS_UPN, "upn", WS + "emailaddress", OID_MAIL, "mail", "email", OID_EPPN, "eduPersonPrincipalName"}
)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return base64.b32encode(h.digest()).decode("ascii").rstrip("=").lower()


def derive_sub(tenant_id: str, connection_id: str, value: str) -> str:
    """The opaque subject for an upstream identifier, scoped to one tenant and one connection."""
    return _digest("broker-sub-v1", tenant_id, connection_id, value)


def pairwise_sub(sub: str, client_id: str) -> str:
    """A per-app subject (OIDC Core 1.0 §8.1 pairwise), with the client_id as the sector identifier."""
    return _digest("broker-pairwise-v1", sub, client_id)


def _attribute(identity: UpstreamIdentity, name: str) -> str | None:
    values = identity.attributes.get(name)
    if values is None:
        real = identity.friendly_names.get(name)
        values = identity.attributes.get(real) if real is not None else None
    for value in values or ():
        if isinstance(value, str) and value:
            return value
    return None


def subject_value(identity: UpstreamIdentity, sources: Iterable[str]) -> tuple[str, str] | None:
    """(identifier, source name) from the first usable source, or None when none is usable."""
    for source in sources:
        if source == NAMEID:
            if identity.subject and identity.subject_format not in NOT_A_SUBJECT:
                value = identity.subject
                if identity.subject_format == EMAIL_FORMAT:
                    value = value.lower()
                return value, NAMEID
            continue
        found = _attribute(identity, source)
        if found is not None:
            return (found.lower() if source in CASE_INSENSITIVE_SOURCES else found), source
    return None
