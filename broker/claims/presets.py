"""Vendor presets: the rules that read what each IdP sends by default, run before a connection's own rules.

Each preset is plain rule JSON (the same closed set as rules.py), so an admin's dry run shows every step.
The SAML presets follow one shape, in this order:

1. `email` is the vendor's email attribute, else an email-shaped NameID (kept in the scratch claim
   `_nameid_email`; no "#" in it: never an Entra ID guest UPN `x#EXT#@y`); `normalize_email` trims and
   lowercases it;
2. `email_verified` is "true": an enterprise IdP asserts the address from its own directory (an admin can
   override with `{"op": "constant", "claim": "email_verified", "value": false}`; an address outside a
   connection's `domains` comes out false whatever the rules say, see pipeline.py);
3. given name, family name, display name and groups from the vendor's attribute names.

`name` falls back to "given family" when absent (done when the profile is built, see pipeline.py).
`generic-oidc` copies the standard claims and takes `email_verified` from the upstream as sent.

Also here, per preset: the subject sources (see subject.py) and attributes whose presence means a warning.
"""

from __future__ import annotations

from broker.model import JSON

WS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
MS = "http://schemas.microsoft.com/identity/claims/"
ENTRA_GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
ENTRA_GROUPS_OVERAGE = "http://schemas.microsoft.com/claims/groups.link"
ENTRA_OBJECT_ID = MS + "objectidentifier"
ADFS_UPN = WS + "upn"
ADFS_GROUP = "http://schemas.xmlsoap.org/claims/Group"
OID_MAIL = "urn:oid:0.9.2342.19200300.100.1.3"
OID_GIVEN_NAME = "urn:oid:2.5.4.42"
OID_SN = "urn:oid:2.5.4.4"
OID_CN = "urn:oid:2.5.4.3"
OID_DISPLAY_NAME = "urn:oid:2.16.840.1.113730.3.1.241"
OID_IS_MEMBER_OF = "urn:oid:1.3.6.1.4.1.5923.1.5.1.1"
OID_EPPN = "urn:oid:1.3.6.1.4.1.5923.1.1.1.6"

NAMEID_EMAIL_PATTERN = r"^([^@\s#]+@[^@\s]+)$"  # no "#": an Entra ID guest UPN (x#EXT#@y) is no email


def _saml(
    *,
    email: tuple[str, ...],
    given: tuple[str, ...],
    family: tuple[str, ...],
    name: tuple[str, ...],
    groups: tuple[str, ...],
    split_groups: str | None = None,
) -> tuple[JSON, ...]:
    rules: list[JSON] = [
        {"op": "regex_extract", "from": "nameid", "to": "_nameid_email", "pattern": NAMEID_EMAIL_PATTERN},
        {"op": "first_of", "from": [*email, "_nameid_email"], "to": "email"},

        {"op": "normalize_email", "claim": "email"},
        {"op": "constant", "claim": "email_verified", "value": True},
        {"op": "first_of", "from": list(given), "to": "given_name"},
        {"op": "first_of", "from": list(family), "to": "family_name"},
    ]
    if name:
        rules.append({"op": "first_of", "from": list(name), "to": "name"})
    rules.append({"op": "first_of", "from": list(groups), "to": "groups"})
    if split_groups is not None:
        rules.append({"op": "split", "claim": "groups", "separator": split_groups})
    return tuple(rules)


PRESETS: dict[str, tuple[JSON, ...]] = {
    "okta": _saml(
        email=("email", "mail"),
        given=("firstName", "givenName"),
        family=("lastName", "sn"),
        name=("displayName",),
        groups=("groups", "group"),
    ),
    "azure-ad": _saml(
        # WS + "name" is the user principal name, not a display name: it is left to the admin's rules.
        email=(WS + "emailaddress",),
        given=(WS + "givenname",),
        family=(WS + "surname",),
        name=(MS + "displayname",),
        groups=(ENTRA_GROUPS,),  # object IDs (GUIDs), not names
    ),
    "adfs": _saml(
        email=(WS + "emailaddress",),
        given=(WS + "givenname",),
        family=(WS + "surname",),
        name=(WS + "name", "http://schemas.xmlsoap.org/claims/CommonName"),
        groups=(ADFS_GROUP,),
    ),
    "generic-saml": _saml(
        email=(OID_MAIL, "mail", "email"),
        given=(OID_GIVEN_NAME, "givenName"),
        family=(OID_SN, "sn"),
        name=(OID_DISPLAY_NAME, "displayName", OID_CN, "cn"),
        groups=(OID_IS_MEMBER_OF, "isMemberOf"),
    ),
    # Ping may send a multi-valued attribute as ONE comma-joined value; PingFederate's own samples use
    # firstname / lastname / group.
    "ping": _saml(
        email=("email", "mail"),
        given=("givenName", "firstname", "firstName"),
        family=("sn", "surname", "lastname", "lastName"),
        name=("displayName", "name"),
        groups=("memberOf", "group", "groups"),
        split_groups=",",
    ),
    # Google sends the primary email as the NameID and only the attributes the admin mapped.
    "google": _saml(
        email=(),
        given=("firstName",),
        family=("lastName",),
        name=(),
        groups=("groups",),
    ),
    "generic-oidc": (
        {"op": "copy", "from": "email", "to": "email"},
        {"op": "normalize_email", "claim": "email"},
        {"op": "copy", "from": "email_verified", "to": "email_verified"},
        {"op": "copy", "from": "name", "to": "name"},
        {"op": "copy", "from": "given_name", "to": "given_name"},
        {"op": "copy", "from": "family_name", "to": "family_name"},
        {"op": "copy", "from": "preferred_username", "to": "preferred_username"},
        {"op": "copy", "from": "groups", "to": "groups"},
        # not `roles`: what an app may do is the broker's to say (a connection's rules map it, from groups or
        # from the OP's own roles claim); an OP must not grant itself "admin" by sending it
    ),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)

# Where the stable subject comes from, in order ("nameid" = the SAML NameID / the OIDC `sub`; a transient
# NameID is skipped). See subject.py.
SUBJECT_SOURCES: dict[str, tuple[str, ...]] = {
    "okta": ("nameid",),
    "azure-ad": (ENTRA_OBJECT_ID,),
    "adfs": (ADFS_UPN, "nameid"),
    # the urn:oid names, then their friendly names (matched as Name or FriendlyName), as the claims are read
    "generic-saml": ("nameid", OID_EPPN, "eduPersonPrincipalName", OID_MAIL, "mail"),
    "ping": ("nameid",),
    "google": ("nameid",),
    "generic-oidc": ("nameid",),
}

# An attribute whose presence in the upstream's raw attributes adds a warning to the profile.
WARN_IF_PRESENT: dict[str, tuple[tuple[str, str], ...]] = {
    "azure-ad": (
        (
            ENTRA_GROUPS_OVERAGE,
            "Entra ID sent a groups overage claim: the user is in more groups than fit in the token, so "
            "'groups' is incomplete. Limit the groups in the Entra ID app's claim settings.",
        ),
    ),
}
