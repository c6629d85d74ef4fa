"""Real vendor bytes (../shared/vendor-samples): every valid response verifies, every invalid one is refused.

Read in place, in binary, never copied. Skipped with a reason when the corpus is absent. The table below is
taken from vendor-samples/MANIFEST.md ("Freeze clock at", Audience, Destination/Recipient, Issuer) and the
InResponseTo values the samples carry (the source test SPs' request IDs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from broker.samlxml.errors import SamlError
from broker.samlxml.response import ResponseExpectations, VerifiedAssertion, parse_instant, verify_response

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "vendor-samples"
RESPONSES = SAMPLES / "saml" / "responses"

pytestmark = pytest.mark.skipif(
    not RESPONSES.is_dir(), reason=f"vendor samples not found at {SAMPLES} (sibling shared/ of the project)"
)


@dataclass(frozen=True)
class Sample:
    name: str
    issuer: str
    audience: str
    acs_url: str
    in_response_to: str | None
    freeze: str
    want_assertions_signed: bool = True
    allow_sha1: bool = False
    sp_key: str | None = None
    cert: str | None = None  # default: <name>.crt
    expect_name_id: str | None = None
    expect_attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    signed_response: bool | None = None
    signed_assertion: bool | None = None


NOPE_ACS_D = "https://saml.test.nope/session/sso/saml/acs/dknhyszjl7"
NOPE_AUD_D = "https://saml.test.nope/session/sso/saml/spentityid/dknhyszjl7"
NOPE_ACS_H = "https://saml.test.nope/session/sso/saml/acs/hp24dqnpvq"
NOPE_AUD_H = "https://saml.test.nope/session/sso/saml/spentityid/hp24dqnpvq"
PINGFED = "https://saml.test.nope:9031/eid/sxpmrhbkzn"
ADFS = "http://fs.spstest2.com/adfs/services/trust"
CLAIMS = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
OKTA_CREWJAM = "http://www.okta.com/exkppsa1qwuFV4D7z0h7"

VALID = [
    Sample(
        "adfs-1",
        ADFS,
        NOPE_AUD_D,
        NOPE_ACS_D,
        "_5988bf45-1cc8-4228-b3e8-1aa8590e63d3",
        "2017-09-21T23:27:06.828Z",
        signed_response=False,
        signed_assertion=True,
    ),
    Sample(
        "adfs-2-encrypted",
        ADFS,
        NOPE_AUD_D,
        NOPE_ACS_D,
        "_252d0129-1c83-496e-b039-ffc9cee11cca",
        "2017-09-21T23:19:11.608Z",
        sp_key="adfs-2-encrypted.sp-key.pem",
        signed_assertion=True,
    ),
    Sample(
        "auth0-1",
        "urn:scaleft-test.auth0.com",
        "urn:scaleft-test.auth0.com",
        "http://localhost:8080/v1/_saml_callback",
        "_e3ce5e05-4e53-44ff-9229-c649f2b859a0",
        "2016-07-25T18:29:17.523Z",
        want_assertions_signed=False,
        allow_sha1=True,
        signed_response=True,
        signed_assertion=False,
    ),
    Sample(
        "entra-id-1",
        "https://sts.windows.net/a9054a0f-2011-4e31-b3ac-fd8c354146ec/",
        "http://localhost:8080/accounts/8155d0cc-d51b-461a-a062-821b6bd574b1/saml",
        "http://localhost:8080/accounts/8155d0cc-d51b-461a-a062-821b6bd574b1/saml/acs",
        None,
        "2023-11-17T18:39:30.312Z",
        signed_response=False,
        signed_assertion=True,
    ),
    Sample(
        "google-1",
        "https://accounts.google.com/o/saml2?idpid=C029op2ga",
        "https://localhost:8080/accounts/bfeb03a0-6022-4862-9bbf-5a4d7608db35/saml",
        "https://example.com/accounts/bfeb03a0-6022-4862-9bbf-5a4d7608db35/saml/acs",
        None,
        "2023-11-16T21:20:27.514Z",
    ),
    Sample(
        "jumpcloud-1",
        "IdP Entity ID",
        "ssoready-entity-id",
        "http://localhost",
        None,
        "2023-11-18T16:43:05.562Z",
    ),
    Sample(
        "keycloak-1",
        "http://localhost:8085/realms/master",
        "http://localhost:8080/v1/saml/saml_conn_7o6ylycayrere4h9kg76vqc0k",
        "http://localhost:8080/v1/saml/saml_conn_7o6ylycayrere4h9kg76vqc0k/acs",
        "saml_flow_95q1hli3z0vohj0d55l4j4yo1",
        "2024-05-20T21:10:44.468Z",
    ),
    Sample(
        "okta-1",
        "http://www.okta.com/exk659aytfMeNI49v0h7",
        '"123"',
        "http://localhost:8080/v1/_saml_callback",
        "_15f66d2d-628b-4d9b-a99e-089d8da862e1",
        "2016-07-25T23:20:14.859Z",
        signed_response=True,
        signed_assertion=True,
    ),
    Sample(
        "okta-2-encrypted",
        "http://www.okta.com/exkbb59wb20X96NY20h7",
        "https://saml.test.nope/session/sso/saml/spentityid/skv8dv26wh",
        "https://saml.test.nope/session/sso/saml/acs/skv8dv26wh",
        "_5260fc99-9c41-433b-8a31-b7a3e3a4e755",
        "2017-09-06T22:13:10.144Z",
        sp_key="okta-2-encrypted.sp-key.pem",
        signed_response=True,
        signed_assertion=True,
    ),
    Sample(
        "okta-3",
        "http://www.okta.com/exkdoocxa1VmjpXmX697",
        "http://localhost:8080",
        "http://localhost:8080",
        None,
        "2024-04-25T20:31:55.494Z",
        signed_response=False,
        signed_assertion=True,
    ),
    Sample(
        "okta-4-encrypted",
        OKTA_CREWJAM,
        "http://localhost:8000/saml/metadata",
        "http://localhost:8000/saml/acs",
        "id-a7364d1e4432aa9085a7a8bd824ea2fa8fa8f684",
        "2020-03-03T19:24:29.213Z",
        want_assertions_signed=False,
        sp_key="crewjam-sp.sp-key.pem",
        signed_response=True,
        signed_assertion=False,
    ),
    Sample(
        "okta-5-encrypted",
        OKTA_CREWJAM,
        "http://localhost:8000/saml/metadata",
        "http://localhost:8000/saml/acs",
        "id-6d976cdde8e76df5df0a8ff58148fc0b7ec6796d",
        "2020-03-03T19:31:55.895Z",
        sp_key="crewjam-sp.sp-key.pem",
        signed_response=False,
        signed_assertion=True,
    ),
    Sample(
        "okta-6-encrypted",
        OKTA_CREWJAM,
        "http://localhost:8000/saml/metadata",
        "http://localhost:8000/saml/acs",
        "id-953d4cab69ff475c5901d12e585b0bb15a7b85fe",
        "2020-03-03T19:40:54.699Z",
        sp_key="crewjam-sp.sp-key.pem",
        signed_response=True,
        signed_assertion=True,
    ),
    Sample(
        "okta-7",
        "http://www.okta.com/exk91cb99lKkKSYoy0h7",
        "http://127.0.0.1:5556/dex/callback",
        "http://127.0.0.1:5556/dex/callback",
        "6zmm5mguyebwvajyf2sdwwcw6m",
        "2017-04-04T04:34:59.330Z",
    ),
    Sample(
        "onelogin-1",
        "https://app.onelogin.com/saml/metadata/634027",
        "{audience}",
        "http://884d40bf.ngrok.io/api/sso/saml2/acs/58af624473d4f375b8e70d81",
        None,
        "2017-03-08T07:53:39Z",
        allow_sha1=True,
    ),
    Sample(
        "onelogin-2",
        "https://app.onelogin.com/saml/metadata/503983",
        "https://29ee6d2e.ngrok.io/saml/metadata",
        "https://29ee6d2e.ngrok.io/saml/acs",
        "id-d40c15c104b52691eccf0a2a5c8a15595be75423",
        "2016-01-05T17:53:11Z",
        want_assertions_signed=False,
        allow_sha1=True,
    ),
    Sample(
        "oracle-oam-1",
        "https://deaoam-dev02.jpl.nasa.gov:14101/oam/fed",
        "JSAuth",
        "http://127.0.0.1:5556/callback",
        "_e66b3a98-831c-4c96-5706-b63fe0549624",
        "2016-12-12T16:54:35Z",
        allow_sha1=True,
    ),
    Sample(
        "pingfederate-1",
        PINGFED,
        NOPE_AUD_H,
        NOPE_ACS_H,
        "_27242a27-9aea-40d6-b603-c1d6daa198d4",
        "2017-09-02T00:12:06.516Z",
        want_assertions_signed=False,
        signed_response=True,
        signed_assertion=False,
    ),
    Sample(
        "pingfederate-2",
        PINGFED,
        NOPE_AUD_H,
        NOPE_ACS_H,
        "_315ab173-992a-4c1b-b99a-faccfd8ecea0",
        "2017-09-02T23:50:08.469Z",
        signed_response=False,
    ),
    Sample(
        "pingfederate-3",
        PINGFED,
        NOPE_AUD_H,
        NOPE_ACS_H,
        "_5ff4ed23-bf22-4287-85a3-8b64948ad9f0",
        "2017-09-01T21:24:46.298Z",
        signed_response=False,
    ),
    Sample(
        "pingfederate-4-encrypted",
        PINGFED,
        NOPE_AUD_H,
        NOPE_ACS_H,
        "_f76c0eed-5023-4d82-9c2e-3bb760997fd1",
        "2017-09-03T01:22:57.598Z",
        sp_key="pingfederate.sp-key.pem",
        signed_response=True,
        signed_assertion=True,
    ),
    Sample(
        "pingone-1",
        "https://auth.pingone.com/3030059e-440b-4ad0-9217-44326f1757f6",
        "ssoready-entity-id",
        "http://localhost",
        None,
        "2023-11-18T16:20:31.265Z",
    ),
    Sample(
        "shibboleth-1-encrypted",
        "https://idp.testshib.org/idp/shibboleth",
        "https://15661444.ngrok.io/saml2/metadata",
        "https://15661444.ngrok.io/saml2/acs",
        "id-9e61753d64e928af5a7a341a97f420c9",
        "2015-12-01T01:56:21.375Z",
        sp_key="crewjam-sp.sp-key.pem",
    ),
]


def _expect(s: Sample, *, now: float | None = None, **overrides: object) -> ResponseExpectations:
    certs = overrides.pop("idp_certificates", None) or (
        (RESPONSES / (s.cert or f"{s.name}.crt")).read_text(),
    )
    keys = ((RESPONSES / s.sp_key).read_bytes(),) if s.sp_key else ()
    exp = ResponseExpectations(
        idp_entity_id=s.issuer,
        sp_entity_id=s.audience,
        acs_url=s.acs_url,
        idp_certificates=certs,  # type: ignore[arg-type]
        in_response_to=s.in_response_to,
        allow_unsolicited=s.in_response_to is None,
        now=parse_instant(s.freeze) if now is None else now,
        want_assertions_signed=s.want_assertions_signed,
        allow_sha1=s.allow_sha1,
        sp_decryption_keys=keys,
    )
    return replace(exp, **overrides)  # type: ignore[arg-type]


def _verify(s: Sample, **kw: object) -> VerifiedAssertion:
    return verify_response((RESPONSES / f"{s.name}.xml").read_bytes(), _expect(s, **kw))  # type: ignore[arg-type]


def test_every_valid_sample_is_listed() -> None:
    on_disk = {p.stem for p in RESPONSES.glob("*.xml")}
    assert on_disk == {s.name for s in VALID}


@pytest.mark.parametrize("s", VALID, ids=lambda s: s.name)
def test_vendor_response_verifies(s: Sample) -> None:
    result = _verify(s)
    assert result.issuer == s.issuer
    assert result.in_response_to == s.in_response_to
    assert result.encrypted == (s.sp_key is not None)
    assert result.signed_response or result.signed_assertion
    if s.signed_response is not None:
        assert result.signed_response is s.signed_response
    if s.signed_assertion is not None:
        assert result.signed_assertion is s.signed_assertion
    assert ("sha1_signature" in result.warnings) is s.allow_sha1
    assert result.not_on_or_after > parse_instant(s.freeze)


@pytest.mark.parametrize("s", VALID, ids=lambda s: s.name)
def test_vendor_response_expires_a_second_past_not_on_or_after(s: Sample) -> None:
    ok = _verify(s)
    with pytest.raises(SamlError) as err:
        _verify(s, now=ok.not_on_or_after + 120.0 + 1.0)
    assert err.value.code == "saml_expired"
    # the last moment inside the window (skew included) still verifies
    assert _verify(s, now=ok.not_on_or_after + 120.0 - 0.001).assertion_id == ok.assertion_id


EXPECTED_VALUES: dict[str, tuple[str | None, dict[str, tuple[str, ...]]]] = {
    "adfs-1": ("paul@spstest2.com", {CLAIMS + "givenname": ("paul",), CLAIMS + "surname": ("fraley",)}),
    "adfs-2-encrypted": (
        "paul@spstest2.com",
        {CLAIMS + "givenname": ("paul",), CLAIMS + "surname": ("fraley",)},
    ),
    "auth0-1": (
        "google-oauth2|117637692321743777825",
        {
            CLAIMS + "emailaddress": ("russell.haering@scaleft.com",),
            "http://schemas.auth0.com/identities": ("[object Object]",),
        },
    ),
    "entra-id-1": (
        "ulysse.carion_codomaindata.com#EXT#@ulyssecarioncodomaindata.onmicrosoft.com",
        {
            CLAIMS + "emailaddress": ("ulysse.carion@codomaindata.com",),
            "http://schemas.microsoft.com/identity/claims/tenantid": (
                "a9054a0f-2011-4e31-b3ac-fd8c354146ec",
            ),
            "http://schemas.microsoft.com/claims/authnmethodsreferences": (
                "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/password",
                "http://schemas.microsoft.com/claims/multipleauthn",
                "http://schemas.microsoft.com/ws/2008/06/identity/authenticationmethod/unspecified",
            ),
        },
    ),
    "google-1": ("ulysse.carion@codomaindata.com", {}),
    "jumpcloud-1": ("ulysse.carion@codomaindata.com", {}),
    "keycloak-1": (
        "ulysse.carion@ssoready.com",
        {
            # one <Attribute Name="Role"> element per role: merged, in document order
            "Role": (
                "view-profile",
                "manage-account-links",
                "default-roles-master",
                "manage-account",
                "uma_authorization",
                "offline_access",
            ),
        },
    ),
    "okta-1": ("russellhaering", {"username": ("russell.haering@scaleft.com",)}),
    "okta-2-encrypted": (
        "fronkey@skyportsystems.com",
        {
            "givenName": ("Fronkey",),
            "sn": ("Kong",),
            "group": ("red", "blue", "green", "Everyone"),
        },
    ),
    "okta-3": ("ulysse.carion@codomaindata.com", {}),
    "okta-4-encrypted": ("testuser@testrsc.com", {"Username": ("FixedValue",)}),
    "okta-5-encrypted": ("testuser@testrsc.com", {"Username": ("FixedValue",)}),
    "okta-6-encrypted": ("testuser@testrsc.com", {"Username": ("FixedValue",)}),
    "okta-7": (
        "eric.chiang+okta@coreos.com",
        {
            "email": ("eric.chiang+okta@coreos.com",),
            "Name": ("Eric",),
            "groups": ("Everyone", "Admins"),
        },
    ),
    "onelogin-1": ("arun@launchdarkly.com", {}),
    "onelogin-2": ("ross@kndr.org", {"User.email": ("ross@kndr.org",), "User.FirstName": ("Ross",)}),
    "oracle-oam-1": ("pkieu", {}),
    "pingfederate-1": ("firstlast@saml.test.nope", {"group": ("red,green,blue",), "firstname": ("First",)}),
    "pingfederate-2": ("firstlast@saml.test.nope", {"group": ("red,green,blue",), "lastname": ("Last",)}),
    "pingfederate-3": ("firstlast@saml.test.nope", {"group": ("red,green,blue",)}),
    "pingfederate-4-encrypted": ("firstlast@saml.test.nope", {"group": ("red,green,blue",)}),
    # PingOne: NameID without Format
    "pingone-1": (
        "9e34fa21-4e8f-4dee-b565-648dbcf25eff",
        {"saml_subject": ("9e34fa21-4e8f-4dee-b565-648dbcf25eff",)},
    ),
    "shibboleth-1-encrypted": (
        "_41bd295976dadd70e1480f318e772841",
        {
            "urn:oid:1.3.6.1.4.1.5923.1.1.1.6": ("myself@testshib.org",),
            "urn:oid:1.3.6.1.4.1.5923.1.1.1.1": ("Member", "Staff"),
            "urn:oid:1.3.6.1.4.1.5923.1.1.1.10": (
                "8F+M9ovyaYNwCId0pVkVsnZYRDo=",
            ),  # NameID inside AttributeValue
        },
    ),
}


@pytest.mark.parametrize("s", VALID, ids=lambda s: s.name)
def test_vendor_response_yields_expected_values(s: Sample) -> None:
    name_id, attributes = EXPECTED_VALUES[s.name]
    result = _verify(s)
    assert result.name_id == name_id
    for name, values in attributes.items():
        assert result.attributes[name] == values
    assert all(isinstance(v, str) for vs in result.attributes.values() for v in vs)


def test_shibboleth_friendly_names_map_to_oid_names() -> None:
    result = _verify(next(s for s in VALID if s.name == "shibboleth-1-encrypted"))
    assert result.friendly_names["eduPersonPrincipalName"] == "urn:oid:1.3.6.1.4.1.5923.1.1.1.6"
    assert result.name_id_format == "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"


def test_okta3_broken_response_signature_is_tolerated_only_because_the_assertion_is_signed() -> None:
    s = next(s for s in VALID if s.name == "okta-3")
    result = _verify(s)
    assert "response_signature_invalid" in result.warnings
    assert result.signed_response is False and result.signed_assertion is True


def test_sha1_vendor_responses_are_refused_without_allow_sha1() -> None:
    for s in VALID:
        if not s.allow_sha1:
            continue
        with pytest.raises(SamlError) as err:
            _verify(s, allow_sha1=False)
        assert err.value.code == "saml_algorithm_refused", s.name


def test_response_only_signed_vendor_samples_are_refused_when_assertions_must_be_signed() -> None:
    for s in VALID:
        if s.want_assertions_signed:
            continue
        with pytest.raises(SamlError) as err:
            _verify(s, want_assertions_signed=True)
        assert err.value.code == "saml_signature_missing", s.name


def test_encrypted_vendor_sample_with_wrong_sp_key_fails_to_decrypt() -> None:
    s = next(s for s in VALID if s.name == "okta-5-encrypted")
    other = (RESPONSES / "pingfederate.sp-key.pem").read_bytes()
    with pytest.raises(SamlError) as err:
        _verify(s, sp_decryption_keys=(other,))
    assert err.value.code == "saml_decryption_failed"
    # key rollover: the right key second in the list still decrypts
    right = (RESPONSES / "crewjam-sp.sp-key.pem").read_bytes()
    assert _verify(s, sp_decryption_keys=(other, right)).encrypted


def test_vendor_sample_signed_by_another_idp_is_refused() -> None:
    s = next(s for s in VALID if s.name == "okta-7")
    other = (RESPONSES / "okta-1.crt").read_text()
    with pytest.raises(SamlError) as err:
        _verify(s, idp_certificates=(other,))
    assert err.value.code == "saml_signature_invalid"
    assert _verify(s, idp_certificates=(other, (RESPONSES / "okta-7.crt").read_text())).signed_assertion


# --- invalid/ ------------------------------------------------------------------------------------

INVALID = RESPONSES / "invalid"
TOOLKIT = Sample(
    "toolkit",
    "http://idp.example.com/metadata.php",
    "http://sp.example.com/demo1/metadata.php",
    "http://sp.example.com/demo1/index.php?acs",
    "ONELOGIN_4fee3b046395c4e751011e97f8900b5273d56685",
    "2014-07-17T01:01:48Z",
    allow_sha1=True,
    want_assertions_signed=False,
)
ONELOGIN2 = next(s for s in VALID if s.name == "onelogin-2")
OKTA3 = next(s for s in VALID if s.name == "okta-3")
DEX = replace(next(s for s in VALID if s.name == "okta-7"), allow_sha1=True, want_assertions_signed=False)


def _bad_certificate_pem() -> str:
    import re

    meta = (INVALID / "okta-3-bad-certificate.metadata.xml").read_bytes().decode()
    b64 = re.search(r"X509Certificate>([^<]+)<", meta)
    assert b64 is not None
    body = "".join(b64.group(1).split())
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


WRAP = "saml_signature_wrapping"
INVALID_CASES: list[tuple[str, Sample, str | None, set[str]]] = [
    # file, expectations, cert file (None = special), acceptable refusal codes
    ("dex-testca-tampered", DEX, "dex-testca-tampered.crt", {"saml_signature_invalid"}),
    ("okta-3-bad-certificate", OKTA3, None, {"saml_signature_invalid"}),
    ("okta-3-bad-digest-algorithm", OKTA3, "../okta-3.crt", {"saml_algorithm_refused"}),
    ("okta-3-bad-signature-algorithm", OKTA3, "../okta-3.crt", {"saml_algorithm_refused"}),
    ("okta-3-no-certificate", OKTA3, "../okta-3.crt", {"saml_signature_invalid"}),
    ("okta-3-unsigned-assertion", OKTA3, "../okta-3.crt", {"saml_signature_invalid"}),
    ("onelogin-2-xsw-one", ONELOGIN2, "../onelogin-2.crt", {"saml_signature_wrapping"}),
    ("onelogin-2-xsw-two", ONELOGIN2, "../onelogin-2.crt", {"saml_signature_wrapping"}),
    ("toolkit-example-xsw-three", TOOLKIT, "toolkit-example.crt", {"saml_multiple_assertions", WRAP}),
    ("toolkit-example-xsw-four", TOOLKIT, "toolkit-example.crt", {"saml_signature_wrapping"}),
    ("toolkit-example-xsw-five", TOOLKIT, "toolkit-example.crt", {"saml_multiple_assertions", WRAP}),
    ("toolkit-example-xsw-six", TOOLKIT, "toolkit-example.crt", {"saml_signature_wrapping"}),
    ("toolkit-example-xsw-seven", TOOLKIT, "toolkit-example.crt", {"saml_signature_wrapping"}),
    ("toolkit-example-xsw-eight", TOOLKIT, "toolkit-example.crt", {"saml_signature_wrapping"}),
    ("toolkit-example-xsw-nine", TOOLKIT, "toolkit-example.crt", {"saml_multiple_assertions", WRAP}),
]


def test_every_invalid_sample_is_listed() -> None:
    on_disk = {p.stem for p in INVALID.glob("*.xml") if "metadata" not in p.name}
    assert on_disk == {c[0] for c in INVALID_CASES} | {"dex-testca-good-reference"}


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("want_assertions_signed", [True, False], ids=["want-signed", "response-sig-ok"])
def test_invalid_vendor_sample_is_rejected(
    case: tuple[str, Sample, str | None, set[str]], want_assertions_signed: bool
) -> None:
    name, s, cert_file, codes = case
    cert = _bad_certificate_pem() if cert_file is None else (INVALID / cert_file).read_text()
    exp = replace(_expect(s, idp_certificates=(cert,)), want_assertions_signed=want_assertions_signed)
    with pytest.raises(SamlError) as err:
        verify_response((INVALID / f"{name}.xml").read_bytes(), exp)
    if want_assertions_signed and err.value.code == "saml_signature_missing":
        return  # refused even earlier, for want of an Assertion signature
    assert err.value.code in codes, (err.value.code, err.value.detail)


def test_dex_good_reference_control_verifies() -> None:
    cert = (INVALID / "dex-testca-good-reference.crt").read_text()
    result = verify_response(
        (INVALID / "dex-testca-good-reference.xml").read_bytes(), _expect(DEX, idp_certificates=(cert,))
    )
    assert result.signed_response and not result.signed_assertion
    assert result.name_id == "eric.chiang+okta@coreos.com"
    assert "sha1_signature" in result.warnings
