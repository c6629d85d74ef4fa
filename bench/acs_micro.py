"""In-process micro-benchmarks of the login's CPU-heavy parts, one core, no HTTP, no database.

    python bench/acs_micro.py [--seconds 3] [--only acs|issuer]

ACS:
  - verify_response/s: broker.samlxml.response.verify_response on a typical signed Okta-style Response
    (Response and Assertion both signed, RSA-SHA256, ~4 KB), the same document every time;
  - complete/s: SamlConnector.complete (base64 decode + verify + replay-cache insert into the in-process
    state store), a fresh Response (new assertion ID) each call, signed beforehand outside the timing;
  - the same two for an Entra-style Response (Assertion only signed) and an encrypted assertion.
Issuer (merged from the former bench/issuer_micro.py):
  - RS256 / ES256 ID-token signatures/s (joserfc), token-endpoint code exchanges/s, userinfo/s and
    code issuance/s on the in-memory issuer environment of tests/issuer/conftest.py.
Responses are built with tests/samlxml/idp_fixtures (signxml), never with the code under test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.model import Connection, LoginTransaction, MappingConfig  # noqa: E402
from broker.ports import FrozenClock  # noqa: E402
from broker.samlxml.metadata import parse_idp_metadata  # noqa: E402
from broker.samlxml.response import ResponseExpectations, verify_response  # noqa: E402
from broker.store.state import MemoryStateStore  # noqa: E402
from broker.upstream.base import CallbackInput  # noqa: E402
from broker.upstream.saml import SamlConnector  # noqa: E402
from broker.upstream.saml_keys import generate_sp_credentials  # noqa: E402
from tests.samlxml.idp_fixtures import build_response, make_idp, to_post_binding  # noqa: E402

PUBLIC = "https://broker.bench.example"
ACS = f"{PUBLIC}/t/acme/connections/okta/saml/acs"
SP_ENTITY_ID = f"{PUBLIC}/t/acme/connections/okta/saml/metadata"
IDP_ID = "https://idp.bench.example/okta"
REQUEST_ID = "_bench-request-1"


def rate(fn: Callable[[], Any], seconds: float, limit: int | None = None) -> tuple[float, int]:
    """(calls per second, calls) of fn over about `seconds` (at most `limit` calls after one warm-up)."""
    fn()  # warm
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and (limit is None or n < limit):
        fn()
        n += 1
    return n / (time.perf_counter() - t0), n


def report(label: str, per_s: float) -> None:
    print(f"{label:<72} {per_s:>9.0f}/s  {1000 / per_s:>7.2f} ms")


def bench_acs(seconds: float) -> None:
    from bench.login_bench import idp_metadata_xml, use_cached_signing_key

    use_cached_signing_key()  # signing happens outside the timed part; only makes preparation faster
    idp = make_idp(IDP_ID)
    now = time.time()
    meta = parse_idp_metadata(idp_metadata_xml(idp).encode(), now=datetime.fromtimestamp(now, UTC))
    sp = generate_sp_credentials("bench okta")
    when = datetime.fromtimestamp(now, UTC)
    connection = Connection(
        id="conn-okta", tenant_id="tenant-acme", tenant_slug="acme", slug="okta", protocol="saml",
        domains=("example.com",), restrict_to_domains=False, mapping=MappingConfig(preset="okta"),
        settings={}, enabled=True, version=1, created_at=when, updated_at=when, sp=sp,
    )
    clock = FrozenClock(now)
    connector = SamlConnector(connection, public_url=PUBLIC, idp=meta, state=MemoryStateStore(), clock=clock)
    assert connector.acs_url == ACS and connector.sp_entity_id == SP_ENTITY_ID
    txn = LoginTransaction(
        id="txn-1", tenant_id="tenant-acme", tenant_slug="acme", connection_id=connection.id,
        connection_slug="okta", request=None, upstream={"request_id": REQUEST_ID}, browser_binding="b",
        created_at=now, expires_at=now + 600,
    )
    expectations = ResponseExpectations(
        idp_entity_id=IDP_ID, sp_entity_id=SP_ENTITY_ID, acs_url=ACS, idp_certificates=(idp.cert_pem,),
        in_response_to=REQUEST_ID, allow_unsolicited=False, now=now,
        sp_decryption_keys=(sp.encryption_key_pem,),
    )

    variants: list[tuple[str, dict[str, Any]]] = [
        ("okta (Response + Assertion signed)", {"style": "okta"}),
        ("entra (Assertion signed)", {"style": "entra"}),
        ("okta, assertion encrypted (AES-256-GCM, RSA-OAEP)", {"style": "okta",
                                                               "encrypt_to_cert_pem": sp.encryption_cert_pem}),
    ]
    for label, kw in variants:
        def make(**extra: Any) -> bytes:
            return build_response(idp, acs_url=ACS, audience=SP_ENTITY_ID, in_response_to=REQUEST_ID,
                                  issue_instant=now, **kw, **extra)

        doc = make()
        per_s, _ = rate(lambda: verify_response(doc, expectations), seconds)
        report(f"verify_response, {label}, {len(doc)} B", per_s)

        # complete(): a fresh assertion ID per call (the replay cache refuses a second use).
        count = max(200, int(per_s * seconds * 1.5))
        forms = [to_post_binding(make()) for _ in range(count)]
        it = iter(forms)

        def complete() -> None:
            callback = CallbackInput(method="POST", params={"SAMLResponse": next(it), "RelayState": "txn-1"},
                                     url=ACS)
            connector.complete(callback, txn)

        t0 = time.perf_counter()
        done = 0
        for _ in range(count - 1):
            complete()
            done += 1
            if time.perf_counter() - t0 >= seconds:
                break
        report(f"SamlConnector.complete, {label}", done / (time.perf_counter() - t0))


def bench_issuer(seconds: float) -> None:
    from joserfc import jwt

    from broker.issuer.keys import KeyRing, generate_signing_key
    from tests.issuer import conftest as c

    ring = KeyRing()
    claims = {"iss": "https://broker.test/t/acme", "sub": "s", "aud": "conf", "iat": 1, "exp": 2, "nonce": "n"}
    for alg in ("RS256", "ES256"):
        g = generate_signing_key(alg)
        key = ring.private(c.signing_key(g, "t"))
        per_s, _ = rate(lambda: jwt.encode({"alg": alg, "kid": g.kid}, claims, key, algorithms=[alg]), seconds)
        report(f"{alg} ID-token signatures (joserfc)", per_s)

    keypool = {n: generate_signing_key(a) for n, a in [("rsa_a", "RS256"), ("rsa_a2", "RS256"),
                                                        ("es_a", "ES256"), ("rsa_b", "RS256"),
                                                        ("foreign", "RS256")]}
    env = c.build_env(keypool)
    for client, label in (("conf", "RS256"), ("ec", "ES256")):
        codes = [env.code_for(env.authorize(client_id=client)) for _ in range(int(3000 * seconds) + 1)]
        it = iter(codes)

        def one() -> None:
            r = env.exchange(next(it), client=client)
            assert r.status == 200

        per_s, _ = rate(one, seconds, limit=len(codes) - 1)
        report(f"token endpoint code exchanges ({label}, basic auth, AT+IDT, in-memory)", per_s)
    tokens = env.exchange(env.code_for(env.authorize())).body
    per_s, _ = rate(lambda: env.userinfo(tokens["access_token"]), seconds)
    report("userinfo (RS256 access-token verify)", per_s)
    per_s, _ = rate(lambda: env.code_for(env.authorize()), seconds)
    report("code issuance (authorization_response)", per_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    p.add_argument("--only", choices=["acs", "issuer"], default=None)
    args = p.parse_args()
    if args.only in (None, "acs"):
        bench_acs(args.seconds)
    if args.only in (None, "issuer"):
        bench_issuer(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
