"""Each preset against what that vendor really sends: names and values copied from the signed sample responses
in ../shared/vendor-samples/saml/responses/ (see its MANIFEST.md; the file is named in each test). Encrypted
samples were decrypted with the SP test key the MANIFEST lists. Repeated <Attribute> elements with one Name
(Keycloak) arrive merged, as the SAML connector hands them over."""

from __future__ import annotations

import pytest

from broker.claims.pipeline import MappingError, apply, explain
from broker.claims.presets import PRESET_NAMES
from broker.model import UpstreamIdentity
from tests.claims.helpers import EMAIL, PERSISTENT, TRANSIENT, UNSPECIFIED, WHERE, identity, mapping, run

WS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
MS = "http://schemas.microsoft.com/identity/claims/"


def test_preset_names() -> None:
    assert set(PRESET_NAMES) == {"okta", "azure-ad", "ping", "google", "adfs", "generic-saml", "generic-oidc"}


def test_okta_7() -> None:
    # okta-7.xml: persistent NameID; attributes email, Name, groups
    ident = identity(
        {"email": ["eric.chiang+okta@coreos.com"], "Name": ["Eric"], "groups": ["Everyone", "Admins"]},
        subject="eric.chiang+okta@coreos.com",
        subject_format=PERSISTENT,
        issuer="http://www.okta.com/exk91cb99lKkKSYoy0h7",
        authn_context="urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
    )
    p = run([], ident, preset="okta")
    assert p.email == "eric.chiang+okta@coreos.com" and p.email_verified is True
    assert p.groups == ("Everyone", "Admins")
    assert p.idp == "http://www.okta.com/exk91cb99lKkKSYoy0h7"
    assert p.acr == "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
    assert (p.tenant, p.connection) == ("acme", "corp-idp")
    assert "eric" not in p.sub and "@" not in p.sub


def test_okta_1_username_nameid_keeps_the_email_attribute_shape() -> None:
    # okta-1.xml: unspecified NameID "russellhaering" (not an email); attribute username
    ident = identity(
        {"username": ["russell.haering@scaleft.com"]}, subject="russellhaering", subject_format=UNSPECIFIED
    )
    p = run([{"op": "copy", "from": "username", "to": "email"}], ident, preset="okta")
    assert p.email == "russell.haering@scaleft.com"
    assert run([], ident, preset="okta").email is None


def test_okta_2_encrypted_given_sn_group() -> None:
    # okta-2-encrypted.xml (decrypted): emailAddress NameID; givenName, sn, group
    ident = identity(
        {"givenName": ["Fronkey"], "sn": ["Kong"], "group": ["red", "blue", "green", "Everyone"]},
        subject="fronkey@skyportsystems.com",
        subject_format=EMAIL,
    )
    p = run([], ident, preset="okta")
    assert (p.email, p.given_name, p.family_name, p.name) == (
        "fronkey@skyportsystems.com",
        "Fronkey",
        "Kong",
        "Fronkey Kong",
    )
    assert p.groups == ("red", "blue", "green", "Everyone")


ENTRA = {
    MS + "tenantid": ["a9054a0f-2011-4e31-b3ac-fd8c354146ec"],
    MS + "objectidentifier": ["74a35d48-1914-4115-82f1-1b8a01449f3d"],
    MS + "displayname": ["Ulysse Carion"],
    MS + "identityprovider": ["live.com"],
    "http://schemas.microsoft.com/claims/authnmethodsreferences": [
        "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/password",
        "http://schemas.microsoft.com/claims/multipleauthn",
        "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/unspecified",
    ],
    WS + "givenname": ["Ulysse"],
    WS + "surname": ["Carion"],
    WS + "emailaddress": ["ulysse.carion@codomaindata.com"],
    WS + "name": ["ulysse.carion_codomaindata.com#EXT#@ulyssecarioncodomaindata.onmicrosoft.com"],
}
ENTRA_NAMEID = "ulysse.carion_codomaindata.com#EXT#@ulyssecarioncodomaindata.onmicrosoft.com"


def test_azure_ad_entra_id_1() -> None:
    # entra-id-1.xml: emailAddress NameID carrying the guest UPN; claim-URI attributes
    ident = identity(ENTRA, subject=ENTRA_NAMEID, subject_format=EMAIL)
    p = run([], ident, preset="azure-ad")
    assert (p.email, p.given_name, p.family_name, p.name) == (
        "ulysse.carion@codomaindata.com",
        "Ulysse",
        "Carion",
        "Ulysse Carion",
    )
    assert p.extra == {} and p.warnings == ()
    # the subject is the object ID, not the NameID: another NameID gives the same sub
    other = identity(ENTRA, subject="someone-else@x.example", subject_format=EMAIL)
    assert run([], other, preset="azure-ad").sub == p.sub


def test_azure_ad_guest_upn_nameid_is_not_an_email() -> None:
    attrs = {k: v for k, v in ENTRA.items() if k != WS + "emailaddress"}
    p = run([], identity(attrs, subject=ENTRA_NAMEID, subject_format=EMAIL), preset="azure-ad")
    assert p.email is None


def test_azure_ad_groups_are_object_ids_and_overage_warns() -> None:
    groups = ["7f1c2a36-5e0a-4a8a-9d5f-3b5f4c1e2d10", "c0ffee00-1234-4abc-8def-0123456789ab"]
    ident = identity(
        {
            **ENTRA,
            "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups": groups,
            "http://schemas.microsoft.com/claims/groups.link": [
                "https://graph.windows.net/a9054a0f-2011-4e31-b3ac-fd8c354146ec/users/74a35d48/getMemberObjects"
            ],
        },
        subject=ENTRA_NAMEID,
        subject_format=EMAIL,
    )
    rule = {
        "op": "map_values",
        "from": "groups",
        "to": "roles",
        "table": {"c0ffee00-1234-4abc-8def-0123456789ab": "admin"},
    }
    p = run([rule], ident, preset="azure-ad")
    assert p.groups == tuple(groups)
    assert p.roles == ("admin",)
    assert len(p.warnings) == 1 and "overage" in p.warnings[0]


def test_azure_ad_without_object_id_has_no_subject() -> None:
    attrs = {k: v for k, v in ENTRA.items() if k != MS + "objectidentifier"}
    with pytest.raises(MappingError) as err:
        run([], identity(attrs, subject=ENTRA_NAMEID, subject_format=EMAIL), preset="azure-ad")
    assert err.value.code == "mapping_subject_missing"


def test_adfs_1() -> None:
    # adfs-1.xml: emailAddress NameID; givenname, surname only. No upn: the NameID is the subject.
    ident = identity(
        {WS + "givenname": ["paul"], WS + "surname": ["fraley"]},
        subject="paul@spstest2.com",
        subject_format=EMAIL,
    )
    p = run([], ident, preset="adfs")
    assert (p.email, p.given_name, p.family_name, p.name) == (
        "paul@spstest2.com",
        "paul",
        "fraley",
        "paul fraley",
    )
    upper = identity(
        {WS + "givenname": ["paul"], WS + "surname": ["fraley"]},
        subject="Paul@SPSTEST2.com",
        subject_format=EMAIL,
    )
    assert run([], upper, preset="adfs").sub == p.sub


def test_adfs_upn_and_group() -> None:
    # auth0-1.xml carries the ws/2005/05 URIs including upn (ADFS shape); Group is ADFS's default group claim
    ident = identity(
        {
            WS + "emailaddress": ["russell.haering@scaleft.com"],
            WS + "name": ["Russell Haering"],
            WS + "givenname": ["Russell"],
            WS + "surname": ["Haering"],
            WS + "upn": ["russell.haering@scaleft.com"],
            "http://schemas.xmlsoap.org/claims/Group": ["Domain Users", "Engineering"],
        },
        subject="google-oauth2|117637692321743777825",
        subject_format=UNSPECIFIED,
    )
    p = run([], ident, preset="adfs")
    assert (p.email, p.name) == ("russell.haering@scaleft.com", "Russell Haering")
    assert p.groups == ("Domain Users", "Engineering")
    # the subject is the upn: a different NameID does not change it
    ident2 = identity(dict(ident.attributes), subject="other", subject_format=UNSPECIFIED)
    assert run([], ident2, preset="adfs").sub == p.sub


SHIB = {
    "urn:oid:0.9.2342.19200300.100.1.1": ["myself"],
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.1": ["Member", "Staff"],
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.6": ["myself@testshib.org"],
    "urn:oid:2.5.4.4": ["And I"],
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.9": ["Member@testshib.org", "Staff@testshib.org"],
    "urn:oid:2.5.4.42": ["Me Myself"],
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.7": ["urn:mace:dir:entitlement:common-lib-terms"],
    "urn:oid:2.5.4.3": ["Me Myself And I"],
    "urn:oid:1.3.6.1.4.1.5923.1.1.1.10": [],  # eduPersonTargetedID: a nested NameID, no text value
    "urn:oid:2.5.4.20": ["555-5555"],
}
SHIB_FRIENDLY = {
    "uid": "urn:oid:0.9.2342.19200300.100.1.1",
    "eduPersonAffiliation": "urn:oid:1.3.6.1.4.1.5923.1.1.1.1",
    "eduPersonPrincipalName": "urn:oid:1.3.6.1.4.1.5923.1.1.1.6",
    "sn": "urn:oid:2.5.4.4",
    "eduPersonScopedAffiliation": "urn:oid:1.3.6.1.4.1.5923.1.1.1.9",
    "givenName": "urn:oid:2.5.4.42",
    "eduPersonEntitlement": "urn:oid:1.3.6.1.4.1.5923.1.1.1.7",
    "cn": "urn:oid:2.5.4.3",
    "eduPersonTargetedID": "urn:oid:1.3.6.1.4.1.5923.1.1.1.10",
    "telephoneNumber": "urn:oid:2.5.4.20",
}


def shib(**kw: str) -> UpstreamIdentity:
    return identity(
        SHIB,
        friendly_names=SHIB_FRIENDLY,
        subject=kw.get("subject", "_41bd295976dadd70e1480f318e772841"),
        subject_format=kw.get("fmt", TRANSIENT),
        issuer="https://idp.testshib.org/idp/shibboleth",
    )


def test_generic_saml_shibboleth_transient_nameid_uses_eppn() -> None:
    # shibboleth-1-encrypted.xml (decrypted): transient NameID; urn:oid names with FriendlyNames
    p = run(
        [{"op": "copy", "from": "eduPersonAffiliation", "to": "affiliation"}], shib(), preset="generic-saml"
    )
    assert (p.given_name, p.family_name, p.name) == ("Me Myself", "And I", "Me Myself And I")
    assert p.email is None  # no mail attribute; a transient NameID is no email
    assert p.extra == {"affiliation": ["Member", "Staff"]}
    other_login = shib(subject="_99999999999999999999999999999999")
    assert run([], other_login, preset="generic-saml").sub == p.sub


@pytest.mark.parametrize("name, friendly", [
    ("urn:mace:dir:attribute-def:eduPersonPrincipalName", "eduPersonPrincipalName"),  # legacy names + friendly
    ("eduPersonPrincipalName", None),  # the friendly name as Name
    ("urn:mace:dir:attribute-def:mail", "mail"),
])
def test_generic_saml_subject_is_also_found_by_friendly_name(name: str, friendly: str | None) -> None:
    """SPEC: attributes are matched by Name, then FriendlyName, and generic-saml reads the urn:oid names and
    their friendly names: the stable subject too, when the NameID is transient."""
    def login(transient_id: str) -> UpstreamIdentity:
        return identity({name: ["Dave@Uni.example"]}, friendly_names={friendly: name} if friendly else {},
                        subject=transient_id, subject_format=TRANSIENT)

    first = run([], login("_3f1a9c"), preset="generic-saml")
    assert first.sub and run([], login("_77aa01"), preset="generic-saml").sub == first.sub
    same_person = identity({"urn:oid:1.3.6.1.4.1.5923.1.1.1.6" if "Principal" in name
                            else "urn:oid:0.9.2342.19200300.100.1.3": ["dave@uni.example"]},
                           subject="_x", subject_format=TRANSIENT)
    assert run([], same_person, preset="generic-saml").sub == first.sub  # lowercased alike, one user


def test_transient_nameid_without_subject_attribute_is_refused() -> None:
    ident = identity({"email": ["a@b.example"]}, subject="_transient123", subject_format=TRANSIENT)
    for preset in ("okta", "google", "ping"):
        with pytest.raises(MappingError) as err:
            run([], ident, preset=preset)
        assert err.value.code == "mapping_subject_missing"
        assert "'corp-idp'" in err.value.message
    # the connection's subject_source fixes it
    from broker.claims.pipeline import apply

    p = apply(mapping([], "okta", subject_source="email"), ident, **WHERE)
    assert p.email == "a@b.example"
    with pytest.raises(MappingError):
        apply(mapping([], "okta", subject_source="nameid"), ident, **WHERE)


def test_ping_federate_comma_joined_group() -> None:
    # pingfederate-1.xml: emailAddress NameID; firstname, group (ONE comma-joined value), lastname
    ident = identity(
        {"firstname": ["First"], "group": ["red,green,blue"], "lastname": ["Last"]},
        subject="firstlast@saml.test.nope",
        subject_format=EMAIL,
    )
    p = run([], ident, preset="ping")
    assert (p.email, p.given_name, p.family_name, p.name) == (
        "firstlast@saml.test.nope",
        "First",
        "Last",
        "First Last",
    )
    assert p.groups == ("red", "green", "blue")


def test_ping_one_no_nameid_format() -> None:
    # pingone-1.xml: NameID without Format; attribute saml_subject
    ident = identity(
        {"saml_subject": ["9e34fa21-4e8f-4dee-b565-648dbcf25eff"]},
        subject="9e34fa21-4e8f-4dee-b565-648dbcf25eff",
        subject_format=None,
    )
    p = run([], ident, preset="ping")
    assert p.email is None and p.sub


def test_ping_documented_names() -> None:
    ident = identity(
        {"mail": ["A@Example.com"], "givenName": ["A"], "surname": ["B"], "memberOf": ["x, y"]},
        subject="a",
        subject_format=UNSPECIFIED,
    )
    p = run([], ident, preset="ping")
    assert (p.email, p.family_name, p.groups) == ("a@example.com", "B", ("x", "y"))


def test_google_1_nameid_is_the_email() -> None:
    # google-1.xml: unspecified NameID = primary email; no attributes
    ident = identity({}, subject="ulysse.carion@codomaindata.com", subject_format=UNSPECIFIED)
    p = run([], ident, preset="google")
    assert p.email == "ulysse.carion@codomaindata.com" and p.email_verified is True
    with_attrs = identity(
        {"firstName": ["Ulysse"], "lastName": ["Carion"], "groups": ["eng@codomaindata.com"]},
        subject="ulysse.carion@codomaindata.com",
        subject_format=UNSPECIFIED,
    )
    p2 = run([], with_attrs, preset="google")
    assert (p2.name, p2.groups, p2.sub) == ("Ulysse Carion", ("eng@codomaindata.com",), p.sub)


def test_onelogin_2_with_rules() -> None:
    # onelogin-2.xml: emailAddress NameID; User.email, memberOf (empty), User.LastName,
    # PersonImmutableID (empty), User.FirstName
    ident = identity(
        {
            "User.email": ["ross@kndr.org"],
            "memberOf": [""],
            "User.LastName": ["Kinder"],
            "PersonImmutableID": [""],
            "User.FirstName": ["Ross"],
        },
        subject="ross@kndr.org",
        subject_format=EMAIL,
    )
    rules = [
        {"op": "copy", "from": "User.FirstName", "to": "given_name"},
        {"op": "copy", "from": "User.LastName", "to": "family_name"},
        {"op": "copy", "from": "memberOf", "to": "groups"},
    ]
    p = run(rules, ident, preset="generic-saml")
    assert (p.email, p.name, p.groups) == ("ross@kndr.org", "Ross Kinder", ())


def test_jumpcloud_1_saml_1_0_unspecified_nameid() -> None:
    # jumpcloud-1.xml: NameID format urn:oasis:names:tc:SAML:1.0:nameid-format:unspecified; no attributes
    ident = identity(
        {},
        subject="ulysse.carion@codomaindata.com",
        subject_format="urn:oasis:names:tc:SAML:1.0:nameid-format:unspecified",
    )
    p = run([], ident, preset="generic-saml")
    assert p.email == "ulysse.carion@codomaindata.com" and p.sub


def test_keycloak_1_repeated_role_attribute() -> None:
    # keycloak-1.xml: emailAddress NameID; six <Attribute Name="Role"> elements
    roles = [
        "view-profile",
        "manage-account-links",
        "default-roles-master",
        "manage-account",
        "uma_authorization",
        "offline_access",
    ]
    ident = identity({"Role": roles}, subject="ulysse.carion@ssoready.com", subject_format=EMAIL)
    rules = [{"op": "filter", "from": "Role", "to": "roles", "pattern": "^manage-"}]
    p = run(rules, ident, preset="generic-saml")
    assert p.email == "ulysse.carion@ssoready.com"
    assert p.roles == ("manage-account-links", "manage-account")


def test_generic_oidc() -> None:
    ident = identity(
        {
            "sub": ["248289761001"],
            "email": ["Jane@Example.com"],
            "email_verified": ["false"],
            "name": ["Jane Doe"],
            "given_name": ["Jane"],
            "family_name": ["Doe"],
            "preferred_username": ["j.doe"],
            "groups": ["staff"],
            "roles": ["admin"],
        },
        subject="248289761001",
        subject_format=None,
        protocol="oidc",
        issuer="https://server.example.com",
        amr=("pwd", "mfa"),
    )
    p = run([], ident, preset="generic-oidc")
    assert (p.email, p.email_verified, p.name, p.groups) == (
        "jane@example.com",
        False,
        "Jane Doe",
        ("staff",),
    )
    assert p.extra == {"preferred_username": "j.doe"}
    assert p.amr == ("pwd", "mfa")
    assert p.roles == (), "an upstream cannot grant roles by sending them; a rule must map them"
    mapped = run([{"op": "copy", "from": "roles", "to": "roles"}], ident, preset="generic-oidc")
    assert mapped.roles == ("admin",)
    verified = identity(
        {"email": ["a@b.example"], "email_verified": ["true"]},
        subject="1",
        subject_format=None,
        protocol="oidc",
    )
    assert run([], verified, preset="generic-oidc").email_verified is True
    absent = identity({"email": ["a@b.example"]}, subject="1", subject_format=None, protocol="oidc")
    assert run([], absent, preset="generic-oidc").email_verified is None


@pytest.mark.parametrize(("email", "domains", "verified"), [
    ("a@b.example", (), True),
    ("a@b.example", ("b.example",), True),
    ("a@xn--bcher-kva.example", ("bücher.example",), True),
    ("a@elsewhere.example", ("b.example",), False),
    ("a@sub.b.example", ("b.example",), False),
])
def test_email_verified_only_within_the_connections_domains(
        email: str, domains: tuple[str, ...], verified: bool) -> None:
    ident = identity({"email": [email], "email_verified": ["true"]}, subject="1", subject_format=None,
                     protocol="oidc")
    p = apply(mapping([], "generic-oidc"), ident, **WHERE, domains=domains)
    assert p.email_verified is verified
    assert any("domains" in w for w in p.warnings) is not verified
    dry_run = explain(mapping([], "generic-oidc"), ident, **WHERE, domains=domains)
    assert dry_run.profile is not None and dry_run.profile.email_verified is verified


def test_an_unverified_email_stays_unverified_within_the_domains() -> None:
    ident = identity({"email": ["a@b.example"], "email_verified": ["false"]}, subject="1", subject_format=None,
                     protocol="oidc")
    p = apply(mapping([], "generic-oidc"), ident, **WHERE, domains=("b.example",))
    assert p.email_verified is False and not p.warnings


@pytest.mark.parametrize("email", [
    "ada@evil.example@corp.example", "x@evil.example,y@corp.example", "ada@corp.example..", "ada@.corp.example",
    "@corp.example", "ada@", "ada @corp.example", "Ada <ada@corp.example>",
])
def test_an_email_that_is_not_one_plain_address_is_never_verified(email: str) -> None:
    """A rule may copy any attribute to `email` (a UPN, a list): an app must not be handed a verified address
    that it may parse differently from the broker."""
    ident = identity({"upn": [email]}, subject="1", subject_format=None, protocol="oidc")
    rules = [{"op": "copy", "from": "upn", "to": "email"}, {"op": "constant", "claim": "email_verified", "value": True}]
    for domains in ((), ("corp.example",)):
        p = apply(mapping(rules, "generic-oidc"), ident, **WHERE, domains=domains)
        assert p.email_verified is False, (email, domains)
        assert any("plain address" in w for w in p.warnings)


@pytest.mark.parametrize("email", ["ada@corp.example", "ada@corp.example.", "a.b+tag@corp.example"])
def test_a_plain_address_within_the_domains_stays_verified(email: str) -> None:
    ident = identity({"upn": [email]}, subject="1", subject_format=None, protocol="oidc")
    rules = [{"op": "copy", "from": "upn", "to": "email"}, {"op": "constant", "claim": "email_verified", "value": True}]
    assert apply(mapping(rules, "generic-oidc"), ident, **WHERE, domains=("corp.example",)).email_verified is True
