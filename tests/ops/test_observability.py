"""Observability of a real `broker serve`: Prometheus metrics, JSON logs with context, no secrets in logs,
and X-Request-Id round trips — after one successful and one failed login."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from lxml import etree

from tests.ops.conftest import (
    REDIRECT_URI,
    Tenant,
    authorize_url,
    begin_login,
    code_of,
    on,
    setup_saml_tenant,
)
from tests.support.broker_server import BOOTSTRAP_KEY, BrokerServer, running_broker
from tests.support.saml_idp import SamlIdp, running_saml_idp

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

RID = "ops-req-0123456789abcdef"


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    with running_saml_idp() as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, ops_pg_url: str, redis_url: str) -> Iterator[BrokerServer]:
    # DEBUG: the most any operator can turn on; secrets stay out of the log even then
    with running_broker(tmp_path_factory.mktemp("obs"), database_url=ops_pg_url,
                        env={"REDIS_URL": redis_url, "BROKER_LOG_LEVEL": "DEBUG"}) as server:
        yield server


@dataclass
class Activity:
    tenant: Tenant
    secrets: dict[str, str] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)
    echoed: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def activity(broker: BrokerServer, idp: SamlIdp) -> Activity:
    """One successful login (through the token and refresh grants) and one refused login."""
    tenant = setup_saml_tenant(broker, idp)
    out = Activity(tenant=tenant)
    scoped = broker.api("POST", f"/tenants/{tenant.slug}/admin-keys", {"label": "ops"})
    assert scoped.status_code == 201, scoped.text
    out.secrets.update(client_secret=tenant.client_secret, bootstrap_admin_key=BOOTSTRAP_KEY,
                       tenant_admin_key=scoped.json()["key"])

    session = requests.Session()
    rid = {step: f"{RID}-{step}" for step in ("authorize", "acs", "token", "refresh")}
    session.headers["X-Request-Id"] = rid["authorize"]
    url = authorize_url(broker.url, tenant, "ok", scope="openid profile email groups offline_access")
    first = session.get(url, allow_redirects=False, timeout=30)
    out.echoed["authorize"] = first.headers.get("X-Request-Id", "")
    session.headers.pop("X-Request-Id")
    action, fields = begin_login(session, url.replace("state=ok", "state=ok2"))
    response_xml = idp.last_response
    assert response_xml is not None
    out.secrets["SAMLResponse"] = fields["SAMLResponse"]
    tree = etree.fromstring(response_xml)
    sig_values = tree.xpath("//*[local-name()='SignatureValue']/text()")
    out.secrets["assertion_signature"] = re.sub(r"\s+", "", sig_values[0])
    assertion = tree.xpath("//*[local-name()='Assertion']")[0]
    out.secrets["assertion_xml"] = etree.tostring(assertion).decode()[:200]
    acs = session.post(on(broker.url, action), data=fields, allow_redirects=False, timeout=30,
                       headers={"X-Request-Id": rid["acs"]})
    out.echoed["acs"] = acs.headers.get("X-Request-Id", "")
    code = code_of(acs)
    out.secrets["code"] = code
    tok = requests.post(f"{broker.url}/t/{tenant.slug}/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
    }, auth=(tenant.client_id, tenant.client_secret), headers={"X-Request-Id": rid["token"]}, timeout=30)
    assert tok.status_code == 200, tok.text
    out.echoed["token"] = tok.headers.get("X-Request-Id", "")
    body = tok.json()
    out.secrets.update(access_token=body["access_token"], id_token=body["id_token"],
                       refresh_token=body["refresh_token"])
    ref = requests.post(f"{broker.url}/t/{tenant.slug}/token", data={
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"],
    }, auth=(tenant.client_id, tenant.client_secret), headers={"X-Request-Id": rid["refresh"]}, timeout=30)
    assert ref.status_code == 200, ref.text
    out.secrets.update(access_token_2=ref.json()["access_token"], refresh_token_2=ref.json()["refresh_token"])

    # a refused login: the IdP's answer posted from another browser (no binding cookie)
    victim = requests.Session()
    action, fields = begin_login(victim, authorize_url(broker.url, tenant, "bad"))
    out.secrets["SAMLResponse_refused"] = fields["SAMLResponse"]
    rid["refused"] = f"{RID}-refused"
    refused = requests.post(on(broker.url, action), data=fields, allow_redirects=False, timeout=30,
                            headers={"X-Request-Id": rid["refused"]})
    assert refused.status_code == 400 and "login_browser_mismatch" in refused.text, refused.text[:300]
    out.request_ids = rid
    return out


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
            out.append((labels, float(m.group(2))))
    return out


def test_metrics_after_a_good_and_a_refused_login(broker: BrokerServer, activity: Activity) -> None:
    text = requests.get(f"{broker.url}/metrics", timeout=10).text
    t = activity.tenant.slug
    ours = {"tenant": t, "connection": "okta"}
    started = [v for labels, v in _samples(text, "broker_logins_started_total") if labels == ours]
    assert started and started[0] >= 2, started
    ok = [v for labels, v in _samples(text, "broker_logins_succeeded_total") if labels == ours]
    assert ok and ok[0] >= 1, ok
    failed = [v for labels, v in _samples(text, "broker_logins_failed_total")
              if labels == {**ours, "reason": "login_browser_mismatch"}]
    assert failed == [1.0], _samples(text, "broker_logins_failed_total")
    for step in ("authorize", "acs", "token"):
        count = [v for labels, v in _samples(text, "broker_step_seconds_count") if labels == {"step": step}]
        assert count and count[0] >= 1, (step, count)
        assert any(labels.get("step") == step and "le" in labels
                   for labels, _ in _samples(text, "broker_step_seconds_bucket"))
    issued = {labels["grant_type"]: v for labels, v in _samples(text, "broker_tokens_issued_total")
              if labels.get("tenant") == t}
    assert issued.get("authorization_code") == 1.0 and issued.get("refresh_token") == 1.0, issued


def test_x_request_id_round_trips(broker: BrokerServer, activity: Activity) -> None:
    for step, echoed in activity.echoed.items():
        assert echoed == activity.request_ids[step], step
    r = requests.get(f"{broker.url}/healthz", headers={"X-Request-Id": "abc-123"}, timeout=10)
    assert r.headers["X-Request-Id"] == "abc-123"
    bad = requests.get(f"{broker.url}/healthz", headers={"X-Request-Id": "no spaces\tor <tags>"}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{16}", bad.headers["X-Request-Id"]), bad.headers["X-Request-Id"]
    fresh = requests.get(f"{broker.url}/healthz", timeout=10).headers["X-Request-Id"]
    assert fresh and fresh != bad.headers["X-Request-Id"]


def _log_records(broker: BrokerServer) -> tuple[list[dict[str, Any]], list[str]]:
    records, other = [], []
    for line in broker.log().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            other.append(line)
    return records, other


def test_logs_are_json_lines_with_request_context(broker: BrokerServer, activity: Activity) -> None:
    records, other = _log_records(broker)
    assert not other, other[:5]
    assert records and all("event" in r for r in records)
    # every line from the logging setup has time and level (the CLI's own "serving" line has neither)
    assert all({"time", "level", "logger"} <= set(r) for r in records if r["event"] != "serving")
    acs = [r for r in records if r.get("request_id") == activity.request_ids["acs"]]
    assert acs and all(r.get("tenant") == activity.tenant.slug and r.get("connection") == "okta" for r in acs), acs
    refused = [r for r in records if r.get("request_id") == activity.request_ids["refused"]]
    assert refused, "the refused login left no log line with its request id"
    for r in refused:
        assert r.get("tenant") == activity.tenant.slug and r.get("connection") == "okta", r
    assert any(r.get("code") == "login_browser_mismatch" or "login_browser_mismatch" in json.dumps(r)
               for r in refused), refused


def test_logs_never_contain_secrets(broker: BrokerServer, activity: Activity) -> None:
    log = broker.log()
    for name, value in activity.secrets.items():
        assert value and value not in log, f"the server log contains the {name}"
    for name in ("access_token", "id_token", "refresh_token"):
        signature = activity.secrets[name].rsplit(".", 1)[-1]
        if len(signature) >= 16:
            assert signature not in log, f"the server log contains the {name}'s signature"


def test_idp_certificate_days_left_gauge(broker: BrokerServer, activity: Activity) -> None:
    text = requests.get(f"{broker.url}/metrics", timeout=10).text
    days = [v for labels, v in _samples(text, "broker_idp_certificate_days_left")
            if labels.get("tenant") == activity.tenant.slug and labels.get("connection") == "okta"]
    assert days and all(v > 0 for v in days), days


def test_every_request_is_one_access_line_without_its_query(broker: BrokerServer, activity: Activity) -> None:
    records, _ = _log_records(broker)
    access = [r for r in records if r.get("logger") == "broker.access"]
    by_rid = {r["request_id"]: r for r in access}
    authorize = by_rid[activity.request_ids["authorize"]]
    assert authorize["event"] == "request" and authorize["method"] == "GET" and authorize["status"] == 302
    assert authorize["path"] == f"/t/{activity.tenant.slug}/authorize", "the query string is never logged"
    assert authorize["level"] == "info" and authorize["tenant"] == activity.tenant.slug
    assert isinstance(authorize["ms"], float) and authorize["ms"] >= 0 and authorize["client"] == "127.0.0.1"
    acs = by_rid[activity.request_ids["acs"]]
    assert (acs["method"], acs["status"], acs["connection"]) == ("POST", 302, "okta")
    assert by_rid[activity.request_ids["token"]]["status"] == 200
    assert by_rid[activity.request_ids["refused"]]["status"] == 400
    assert sum(r.get("request_id") == activity.request_ids["token"] for r in access) == 1
    probes = [r for r in access if r["path"] in ("/healthz", "/readyz", "/metrics")]
    assert probes and all(r["level"] == "debug" for r in probes), "probes are logged at DEBUG only"
    assert all(isinstance(r.get("pid"), int) for r in records if r["event"] != "serving")


def test_gunicorn_lifecycle_lines_are_json_with_the_worker_pid(broker: BrokerServer) -> None:
    records, other = _log_records(broker)
    assert not other, other[:5]
    events = [r["event"] for r in records if r.get("logger") == "gunicorn.error"]
    assert any(e.startswith("Listening at:") for e in events), events[:10]
    booted = [e for e in events if e.startswith("Booting worker with pid")]
    assert booted and booted[0].rsplit(" ", 1)[-1].isdigit()
