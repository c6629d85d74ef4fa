"""Scale-out: two `broker serve` replicas behind one public URL, sharing PostgreSQL and Redis.

Both replicas are started with the same BROKER_PUBLIC_URL (as behind a load balancer) and each is reached
on its own port: every step of a login may land on either replica, and single-use values, the replay cache,
signing keys and connection changes are shared through the stores, never kept per process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.ops.conftest import (
    Tenant,
    authorize_url,
    begin_login,
    code_of,
    full_login,
    jwt_claims,
    jwt_header,
    post_acs,
    redeem,
    setup_saml_tenant,
)
from tests.support.broker_server import BOOTSTRAP_KEY, SECRET_KEY, BrokerServer, free_port, running_broker
from tests.support.saml_idp import SamlIdp, running_saml_idp

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    with running_saml_idp() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, ops_pg_url: str,
             redis_url: str) -> Iterator[tuple[BrokerServer, BrokerServer]]:
    port_a = free_port()
    public = f"http://127.0.0.1:{port_a}"
    env = {"BROKER_PUBLIC_URL": public, "REDIS_URL": redis_url}
    with running_broker(tmp_path_factory.mktemp("a"), port=port_a, database_url=ops_pg_url, env=env) as a, \
            running_broker(tmp_path_factory.mktemp("b"), database_url=ops_pg_url, env=env) as b:
        yield a, b


@pytest.fixture(scope="module")
def tenant(replicas: tuple[BrokerServer, BrokerServer], idp: SamlIdp) -> Tenant:
    return setup_saml_tenant(replicas[0], idp)


def test_replicas_share_the_public_url(replicas: tuple[BrokerServer, BrokerServer], tenant: Tenant) -> None:
    a, b = replicas
    da = requests.get(f"{a.url}/t/{tenant.slug}/.well-known/openid-configuration", timeout=10).json()
    db = requests.get(f"{b.url}/t/{tenant.slug}/.well-known/openid-configuration", timeout=10).json()
    assert da == db
    assert da["issuer"] == f"{a.url}/t/{tenant.slug}"


def test_login_begun_on_a_completes_on_b_and_code_redeems_on_a(
        replicas: tuple[BrokerServer, BrokerServer], tenant: Tenant) -> None:
    a, b = replicas
    session = requests.Session()
    action, fields = begin_login(session, authorize_url(a.url, tenant, "x1"))
    assert action == f"{a.url}/t/{tenant.slug}/connections/okta/saml/acs"  # the public ACS URL
    code = code_of(post_acs(session, b.url, action, fields))
    r = redeem(a.url, tenant, code)
    assert r.status_code == 200, r.text
    claims = jwt_claims(r.json()["id_token"])
    assert claims["iss"] == f"{a.url}/t/{tenant.slug}" and claims["email"] == "alice@acme.test"


def test_code_issued_by_a_is_redeemed_on_b_once(replicas: tuple[BrokerServer, BrokerServer],
                                                tenant: Tenant) -> None:
    a, b = replicas
    code = full_login(requests.Session(), a.url, tenant, "x2")
    first = redeem(b.url, tenant, code)
    assert first.status_code == 200, first.text
    again = redeem(a.url, tenant, code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text
    # reuse is an event: what the first redemption issued is revoked (checked on the other replica)
    intro = requests.post(f"{b.url}/t/{tenant.slug}/introspect", data={"token": first.json()["access_token"]},
                          auth=(tenant.client_id, tenant.client_secret), timeout=10)
    assert intro.status_code == 200 and intro.json()["active"] is False, intro.text


def test_replayed_saml_response_is_refused_on_the_other_replica(
        replicas: tuple[BrokerServer, BrokerServer], tenant: Tenant, idp: SamlIdp) -> None:
    a, b = replicas
    session = requests.Session()
    action, fields = begin_login(session, authorize_url(a.url, tenant, "x3"))
    code_of(post_acs(session, a.url, action, fields))
    replay = post_acs(session, b.url, action, fields)
    assert replay.status_code in (400, 403), (replay.status_code, replay.text[:300])
    assert "code=" not in replay.headers.get("Location", "")
    # and again with a fresh transaction of the same browser: the assertion ID itself is remembered
    action2, fields2 = begin_login(session, authorize_url(b.url, tenant, "x4", prompt="login"))
    fields2["SAMLResponse"] = fields["SAMLResponse"]
    replay2 = post_acs(session, b.url, action2, fields2)
    assert "code=" not in replay2.headers.get("Location", ""), replay2.headers.get("Location")
    events = a.api("GET", f"/tenants/{tenant.slug}/audit?type=login&outcome=failure").json()["events"]
    assert events and events[0]["reason"] in ("saml_replay", "saml_in_response_to_mismatch"), events[:2]


def test_key_rotation_on_a_is_used_by_b_without_restart(replicas: tuple[BrokerServer, BrokerServer],
                                                        tenant: Tenant) -> None:
    a, b = replicas
    before = redeem(b.url, tenant, full_login(requests.Session(), b.url, tenant, "k1"))
    assert before.status_code == 200, before.text
    old_kid = jwt_header(before.json()["id_token"])["kid"]
    rotated = a.api("POST", f"/tenants/{tenant.slug}/keys/rotate")
    assert rotated.status_code in (200, 201), rotated.text
    new_kid = rotated.json()["active_kid"]
    assert new_kid != old_kid
    kids = {k["kid"] for k in requests.get(f"{b.url}/t/{tenant.slug}/jwks", timeout=10).json()["keys"]}
    assert {old_kid, new_kid} <= kids
    after = redeem(b.url, tenant, full_login(requests.Session(), a.url, tenant, "k2"))
    assert after.status_code == 200, after.text
    assert jwt_header(after.json()["id_token"])["kid"] == new_kid


def test_connection_change_on_a_takes_effect_on_b_at_once(replicas: tuple[BrokerServer, BrokerServer],
                                                          tenant: Tenant) -> None:
    a, b = replicas
    # warm B's caches first, so that "at once" is not just "first use"
    first = redeem(b.url, tenant, full_login(requests.Session(), b.url, tenant, "c1"))
    assert "department" not in jwt_claims(first.json()["id_token"])
    hint = requests.get(authorize_url(b.url, tenant, "c0", login_hint="bob@newco.test"), allow_redirects=False,
                        timeout=10)
    assert hint.status_code == 200 and "login_hint" in hint.text  # not known yet: the email page

    r = a.api("PATCH", f"/tenants/{tenant.slug}/connections/okta", {
        "domains": ["acme.test", "newco.test"],
        "mapping": {"preset": "okta", "rules": [{"op": "constant", "claim": "department", "value": "replicas"}]},
    })
    assert r.status_code == 200, r.text

    hint = requests.get(authorize_url(b.url, tenant, "c2", login_hint="bob@newco.test"), allow_redirects=False,
                        timeout=10)
    assert hint.status_code == 302 and hint.headers["Location"].startswith("http://127.0.0.1:"), hint.text[:300]
    second = redeem(b.url, tenant, full_login(requests.Session(), b.url, tenant, "c3"))
    assert second.status_code == 200, second.text
    assert jwt_claims(second.json()["id_token"]).get("department") == "replicas"


# -- several workers in one server ---------------------------------------------------------------------------


def test_serve_with_two_workers_and_redis(tmp_path: Path, ops_pg_url: str, redis_url: str, idp: SamlIdp) -> None:
    with running_broker(tmp_path, workers=2, database_url=ops_pg_url, env={"REDIS_URL": redis_url}) as server:
        tenant = setup_saml_tenant(server, idp)
        for i in range(4):  # several logins, so that steps land on both workers
            r = redeem(server.url, tenant, full_login(requests.Session(), server.url, tenant, f"w{i}"))
            assert r.status_code == 200, r.text
            assert jwt_claims(r.json()["id_token"])["email"] == "alice@acme.test"


def test_serve_with_two_workers_without_redis_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("BROKER_", "DATABASE_URL", "REDIS_URL"))}
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}", "BROKER_SECRET_KEY": SECRET_KEY,
                "BROKER_BOOTSTRAP_ADMIN_KEY": BOOTSTRAP_KEY})
    proc = subprocess.run([sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port",
                           str(free_port()), "--workers", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "REDIS_URL" in proc.stderr and "workers" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
