"""Real vendor bytes -> verified -> vendor preset -> normalized profile.

Every valid response in ../shared/vendor-samples/saml/responses/ is verified exactly as
tests/samlxml/test_vendor_responses.py does (its table and helpers are reused), turned into the
UpstreamIdentity that broker/upstream/saml.py's SamlConnector.complete() builds, and mapped with that
vendor's preset through broker.claims.pipeline. Read in place, never copied; skipped when absent.

Preset per vendor: okta -> okta, entra-id -> azure-ad, adfs -> adfs, pingfederate/pingone -> ping,
google -> google; auth0 sends the ws/2005/05 claim URIs (emailaddress, givenname, surname, name, upn),
so its closest preset is adfs; jumpcloud, keycloak, onelogin, oracle-oam and shibboleth -> generic-saml.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from broker.claims.pipeline import apply, compile_mapping
from broker.claims.subject import derive_sub
from broker.model import MappingConfig, Profile, UpstreamIdentity
from broker.samlxml.response import VerifiedAssertion
from broker.upstream.saml import identity_from_assertion
from tests.samlxml.test_vendor_responses import RESPONSES, SAMPLES, VALID, Sample, _verify

pytestmark = pytest.mark.skipif(
    not RESPONSES.is_dir(), reason=f"vendor samples not found at {SAMPLES} (sibling shared/ of the project)"
)

TENANT, TENANT_ID = "acme", "tenant-id-1"
CONNECTION, CONNECTION_ID = "idp", "connection-id-1"

PRESET_OF_VENDOR = {
    "adfs": "adfs",
    "auth0": "adfs",
    "entra-id": "azure-ad",
    "google": "google",
    "jumpcloud": "generic-saml",
    "keycloak": "generic-saml",
    "okta": "okta",
    "onelogin": "generic-saml",
    "oracle-oam": "generic-saml",
    "pingfederate": "ping",
    "pingone": "ping",
    "shibboleth": "generic-saml",
}


def vendor_of(name: str) -> str:
    """'okta-2-encrypted' -> 'okta', 'entra-id-1' -> 'entra-id', 'oracle-oam-1' -> 'oracle-oam'."""
    base = name.removesuffix("-encrypted")
    return base.rsplit("-", 1)[0]


@dataclass(frozen=True)
class Expected:
    email: str | None
    subject_value: str  # the upstream identifier the opaque sub is derived from
    given_name: str | None = None
    family_name: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


PAUL = Expected("paul@spstest2.com", "paul@spstest2.com", "paul", "fraley", "paul fraley")
ULYSSE = Expected("ulysse.carion@codomaindata.com", "ulysse.carion@codomaindata.com")
CREWJAM = Expected("testuser@testrsc.com", "testuser@testrsc.com")
PINGFED = Expected("firstlast@saml.test.nope", "firstlast@saml.test.nope", "First", "Last", "First Last",
                   ("red", "green", "blue"))

EXPECTED: dict[str, Expected] = {
    "adfs-1": PAUL,
    "adfs-2-encrypted": PAUL,
    # adfs preset: the subject is the UPN (lowercased), the display name the ws/2005/05 `name` claim
    "auth0-1": Expected("russell.haering@scaleft.com", "russell.haering@scaleft.com", "Russell", "Haering",
                        "Russell Haering", warnings=("sha1",)),
    # azure-ad: email from the emailaddress claim (the NameID is a guest UPN x#EXT#@y, never an email);
    # sub from the objectidentifier
    "entra-id-1": Expected("ulysse.carion@codomaindata.com", "74a35d48-1914-4115-82f1-1b8a01449f3d", "Ulysse",
                           "Carion", "Ulysse Carion"),
    "google-1": ULYSSE,
    "jumpcloud-1": ULYSSE,
    # keycloak's `Role` attribute is no group: generic-saml maps isMemberOf only
    "keycloak-1": Expected("ulysse.carion@ssoready.com", "ulysse.carion@ssoready.com"),
    # okta-1 sends the address only in a custom `username` attribute, which the okta preset does not read
    "okta-1": Expected(None, "russellhaering"),
    "okta-2-encrypted": Expected("fronkey@skyportsystems.com", "fronkey@skyportsystems.com", "Fronkey", "Kong",
                                 "Fronkey Kong", ("red", "blue", "green", "Everyone")),
    "okta-3": Expected("ulysse.carion@codomaindata.com", "ulysse.carion@codomaindata.com",
                       warnings=("response_signature_invalid",)),
    "okta-4-encrypted": CREWJAM,
    "okta-5-encrypted": CREWJAM,
    "okta-6-encrypted": CREWJAM,
    "okta-7": Expected("eric.chiang+okta@coreos.com", "eric.chiang+okta@coreos.com",
                       groups=("Everyone", "Admins")),
    "onelogin-1": Expected("arun@launchdarkly.com", "arun@launchdarkly.com", warnings=("sha1",)),
    # OneLogin's default User.FirstName / User.LastName / User.email names are read by no preset
    "onelogin-2": Expected("ross@kndr.org", "ross@kndr.org", warnings=("sha1",)),
    "oracle-oam-1": Expected(None, "pkieu", warnings=("sha1",)),
    "pingfederate-1": PINGFED,
    "pingfederate-2": PINGFED,
    "pingfederate-3": PINGFED,
    "pingfederate-4-encrypted": PINGFED,
    # PingOne: NameID without Format, no email attribute
    "pingone-1": Expected(None, "9e34fa21-4e8f-4dee-b565-648dbcf25eff"),
    # transient NameID: sub from eduPersonPrincipalName; names from the urn:oid attributes (cn = display name)
    "shibboleth-1-encrypted": Expected(None, "myself@testshib.org", "Me Myself", "And I", "Me Myself And I"),
}


def identity_of(verified: VerifiedAssertion, entity_id: str) -> UpstreamIdentity:
    """The UpstreamIdentity exactly as SamlConnector.complete() builds it (issuer = the metadata entityID)."""
    return identity_from_assertion(verified, entity_id)


def profile_of(s: Sample, *, connection_id: str = CONNECTION_ID) -> Profile:
    identity = identity_of(_verify(s), s.issuer)
    mapping = compile_mapping(MappingConfig(preset=PRESET_OF_VENDOR[vendor_of(s.name)], rules=()))
    return apply(mapping, identity, tenant=TENANT, tenant_id=TENANT_ID, connection=CONNECTION,
                 connection_id=connection_id)


def test_every_valid_sample_has_a_preset_and_an_expectation() -> None:
    assert {s.name for s in VALID} == set(EXPECTED)
    assert {vendor_of(s.name) for s in VALID} <= set(PRESET_OF_VENDOR)


@pytest.mark.parametrize("s", VALID, ids=lambda s: s.name)
def test_vendor_bytes_verify_and_map_to_the_normalized_profile(s: Sample) -> None:
    want = EXPECTED[s.name]
    p = profile_of(s)

    assert p.idp == s.issuer
    assert (p.tenant, p.connection) == (TENANT, CONNECTION)
    assert p.email == want.email
    assert p.email_verified is (True if want.email is not None else None)
    assert p.given_name == want.given_name
    assert p.family_name == want.family_name
    assert p.name == want.name
    assert p.groups == want.groups
    assert p.roles == ()  # no preset turns an upstream attribute into roles
    assert p.extra == {}  # nothing unmapped leaks into the profile
    assert p.warnings == want.warnings


@pytest.mark.parametrize("s", VALID, ids=lambda s: s.name)
def test_vendor_sub_is_stable_opaque_and_scoped_to_the_connection(s: Sample) -> None:
    want = EXPECTED[s.name]
    p = profile_of(s)
    assert p.sub == derive_sub(TENANT_ID, CONNECTION_ID, want.subject_value)
    assert len(p.sub) == 52 and p.sub.isalnum() and p.sub == p.sub.lower()
    assert "@" not in p.sub and p.sub != p.email
    assert profile_of(s).sub == p.sub  # stable: the same assertion maps to the same subject
    assert profile_of(s, connection_id="connection-id-2").sub != p.sub  # another connection, another subject


def test_entra_guest_upn_nameid_is_never_taken_as_the_email() -> None:
    entra = next(s for s in VALID if s.name == "entra-id-1")
    verified = _verify(entra)
    assert verified.name_id is not None and "#EXT#" in verified.name_id
    assert profile_of(entra).email != verified.name_id.lower()
