"""`broker demo` end to end: the real command (gunicorn, one worker) in a temporary working directory, its
built-in development IdP (a real SAML IdP and a real OpenID Provider) and the /demo app page, driven over
HTTP with requests as the browser. Also: production refuses the dev IdP, and it is absent when disabled."""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from broker.devidp.keys import demo_client_secret
from broker.errors import ConfigError
from broker.settings import DEV_SECRET_KEY, load_settings
from tests.support.broker_server import free_port
from tests.support.saml_idp import parse_autopost

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@dataclass
class Demo:
    url: str
    cwd: Path
    process: subprocess.Popen[bytes]

    def output(self) -> str:
        return (self.cwd / "demo.out").read_text(errors="replace")

    def errors(self) -> str:
        return (self.cwd / "demo.err").read_text(errors="replace")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "DATABASE_URL", "REDIS_URL"))}


def start_demo(cwd: Path, port: int, env: dict[str, str] | None = None) -> Demo:
    with open(cwd / "demo.out", "wb") as out, open(cwd / "demo.err", "wb") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "broker", "demo", "--port", str(port)], cwd=cwd, env={**_env(), **(env or {})},
            stdout=out, stderr=err, start_new_session=True,
        )
    demo = Demo(url=f"http://127.0.0.1:{port}", cwd=cwd, process=proc)
    deadline = time.monotonic() + 60
    while "Open " not in demo.output():
        if proc.poll() is not None:
            raise RuntimeError(f"broker demo exited early:\n{demo.errors()}")
        if time.monotonic() > deadline:
            stop_demo(demo)
            raise RuntimeError(f"broker demo did not become ready:\n{demo.errors()}")
        time.sleep(0.1)
    return demo


def stop_demo(demo: Demo) -> None:
    if demo.process.poll() is None:
        os.killpg(demo.process.pid, signal.SIGTERM)
        try:
            demo.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(demo.process.pid, signal.SIGKILL)
            demo.process.wait()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = start_demo(tmp_path_factory.mktemp("demo-cwd"), free_port())
    try:
        yield running
    finally:
        stop_demo(running)


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def sign_in(demo: Demo, connection: str, *, email: str = "grace@example.com", name: str = "Grace Hopper",
            groups: tuple[str, ...] = ("Everyone", "Admins")) -> requests.Response:
    """The browser's way through: /demo/login -> broker authorize -> dev IdP login page -> back to /demo."""
    s = requests.Session()
    r = s.get(f"{demo.url}/demo/login/{connection}", timeout=30)
    assert r.status_code == 200 and "/dev/idp/login" in r.url, (r.status_code, r.url, r.text[:500])
    handle = re.search(r'name="req" value="([^"]+)"', r.text)
    assert handle, r.text[:1000]
    r = s.post(f"{demo.url}/dev/idp/login", timeout=30,
               data={"req": html.unescape(handle.group(1)), "email": email, "name": name, "groups": list(groups)})
    if "SAMLResponse" in r.text:  # SAML: the HTTP-POST binding's self-submitting form
        action, fields = parse_autopost(r.text)
        r = s.post(action, data=fields, timeout=30)
    assert r.status_code == 200, (r.status_code, r.url, r.text[:1000])
    assert re.search(r"/demo/result/[^/]+$", r.url), r.url
    return r


def test_demo_prints_the_url_and_serves_the_demo_page(demo: Demo) -> None:
    assert f"Open {demo.url}/demo" in demo.output()
    assert (demo.cwd / "broker-demo.db").is_file()
    keys = demo.cwd / ".broker-dev" / "dev-idp-keys.json"
    assert keys.is_file() and keys.stat().st_mode & 0o077 == 0
    r = requests.get(f"{demo.url}/demo", timeout=10)
    assert r.status_code == 200
    assert "Sign in with SAML" in r.text and "Sign in with OIDC" in r.text
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert requests.get(f"{demo.url}/dev/idp/saml/metadata", timeout=10).status_code == 200


def test_the_applied_saml_connection_is_in_the_certificate_gauge_before_any_login(demo: Demo) -> None:
    """`config apply` keeps a metadata_url's first good copy (as the admin API does), so the expiry gauge
    lists the connection from the start."""
    gauge = requests.get(f"{demo.url}/metrics", timeout=10).text
    assert re.search(r'^broker_idp_certificate_days_left\{[^}]*connection="dev-saml"[^}]*\} \d', gauge, re.M), gauge


def test_saml_login_through_the_dev_idp(demo: Demo) -> None:
    r = sign_in(demo, "dev-saml")
    page = text_of(r.text)
    assert "Signed in through connection  dev-saml" in page
    assert "grace@example.com" in page and "Grace Hopper" in page
    profile = text_of(r.text.split('id="profile"')[1].split("</div>")[0])
    assert re.search(r"roles\s+admin", profile), profile  # map_values groups -> roles
    assert re.search(r"groups\s+Everyone, Admins", profile), profile
    assert '"iss": "' + demo.url + '/t/demo"' in page and '"aud": "demo-app"' in page
    assert '"alg": "RS256"' in page
    raw = text_of(r.text.split('id="raw-attributes"')[1].split("</div>")[0])
    for attr in ("firstName", "lastName", "displayName", "groups"):
        assert attr in raw
    assert "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent" in page
    assert f"{demo.url}/dev/idp/saml/metadata" in page  # the upstream entityID


def test_oidc_login_through_the_dev_idp(demo: Demo) -> None:
    r = sign_in(demo, "dev-oidc", email="linus@example.org", name="Linus", groups=("Engineering",))
    page = text_of(r.text)
    assert "Signed in through connection  dev-oidc" in page
    profile = text_of(r.text.split('id="profile"')[1].split("</div>")[0])
    assert re.search(r"roles\s+developer", profile), profile
    assert re.search(r"idp\s+" + re.escape(f"{demo.url}/dev/idp/oidc"), profile), profile
    raw = text_of(r.text.split('id="raw-attributes"')[1].split("</div>")[0])
    assert "email_verified" in raw and "linus@example.org" in raw and "Engineering" in raw


def test_demo_page_shows_no_tokens_and_escapes_input(demo: Demo) -> None:
    r = sign_in(demo, "dev-saml", name='Eve <script>alert("x")</script>')
    assert "<script>" not in r.text
    assert "&lt;script&gt;" in r.text
    assert not re.search(r"eyJ[\w-]+\.eyJ[\w-]+\.", r.text)  # no encoded JWT (ID or access token) on the page
    assert '"sid": "(hidden' in html.unescape(r.text)


def test_result_page_belongs_to_its_browser(demo: Demo) -> None:
    r = sign_in(demo, "dev-oidc")
    other = requests.get(r.url, timeout=10)
    assert other.status_code == 404
    assert "Signed in" not in other.text


def test_callback_without_a_started_login_is_refused(demo: Demo) -> None:
    r = requests.get(f"{demo.url}/demo/callback", params={"code": "x", "state": "y" * 32}, timeout=10)
    assert r.status_code == 400
    assert "not started in this browser" in r.text


# --- the dev IdP on its own: what it trusts -----------------------------------------------------------------


def _redirect_request(acs: str, issuer: str) -> str:
    xml = (f'<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
           f'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_{secrets.token_hex(8)}" Version="2.0" '
           f'IssueInstant="2030-01-01T00:00:00Z" AssertionConsumerServiceURL="{acs}">'
           f"<saml:Issuer>{issuer}</saml:Issuer></samlp:AuthnRequest>")
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(c.compress(xml.encode()) + c.flush()).decode()


def test_dev_saml_idp_answers_only_this_brokers_connections(demo: Demo) -> None:
    acs = f"{demo.url}/t/demo/connections/dev-saml/saml/acs"
    sp = f"{demo.url}/t/demo/connections/dev-saml/saml/metadata"
    sso = f"{demo.url}/dev/idp/saml/sso"
    ok = requests.get(sso, params={"SAMLRequest": _redirect_request(acs, sp)}, allow_redirects=False, timeout=10)
    assert ok.status_code == 302 and "/dev/idp/login?req=" in ok.headers["Location"]
    for bad_acs, bad_issuer in (("https://evil.example/acs", sp), (acs, "https://evil.example/sp"),
                                (f"{demo.url}/t/demo/connections/nope/saml/acs", sp),
                                (f"{demo.url}/t/demo/connections/dev-oidc/saml/acs", sp)):
        r = requests.get(sso, params={"SAMLRequest": _redirect_request(bad_acs, bad_issuer)},
                         allow_redirects=False, timeout=10)
        assert r.status_code == 400, (bad_acs, bad_issuer, r.status_code)
    doctype = base64.b64encode(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>').decode()
    assert requests.post(sso, data={"SAMLRequest": doctype}, timeout=10).status_code == 400


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _dev_op_code(demo: Demo, challenge: str, redirect_uri: str) -> str:
    s = requests.Session()
    r = s.get(f"{demo.url}/dev/idp/oidc/authorize", timeout=10, params={
        "client_id": "broker-demo", "redirect_uri": redirect_uri, "response_type": "code", "scope": "openid email",
        "state": "st", "nonce": "n-1", "code_challenge": challenge, "code_challenge_method": "S256"})
    assert r.status_code == 200 and "/dev/idp/login" in r.url, r.text[:500]
    handle = html.unescape(re.search(r'name="req" value="([^"]+)"', r.text).group(1))  # type: ignore[union-attr]
    r = s.post(f"{demo.url}/dev/idp/login", allow_redirects=False, timeout=10,
               data={"req": handle, "email": "ada@example.org", "name": "Ada"})
    assert r.status_code == 302
    location = r.headers["Location"]
    assert location.startswith(redirect_uri + "?")
    q = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert q["state"] == "st" and q["iss"] == f"{demo.url}/dev/idp/oidc"
    return q["code"]


def test_dev_op_codes_are_single_use_and_bound_to_client_and_pkce(demo: Demo) -> None:
    redirect_uri = f"{demo.url}/t/demo/connections/dev-oidc/oidc/callback"
    token_url = f"{demo.url}/dev/idp/oidc/token"
    secret = demo_client_secret(DEV_SECRET_KEY)
    verifier, challenge = _pkce()
    code = _dev_op_code(demo, challenge, redirect_uri)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": verifier}
    wrong = requests.post(token_url, data=form, auth=("broker-demo", "wrong-secret"), timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"

    code = _dev_op_code(demo, challenge, redirect_uri)
    bad_pkce = requests.post(token_url, data={**form, "code": code, "code_verifier": "x" * 43},
                             auth=("broker-demo", secret), timeout=10)
    assert bad_pkce.status_code == 400 and bad_pkce.json()["error"] == "invalid_grant"

    code = _dev_op_code(demo, challenge, redirect_uri)
    first = requests.post(token_url, data={**form, "code": code}, auth=("broker-demo", secret), timeout=10)
    assert first.status_code == 200, first.text
    body: dict[str, Any] = first.json()
    keys = KeySet.import_key_set(requests.get(f"{demo.url}/dev/idp/oidc/jwks", timeout=10).json())
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["iss"] == f"{demo.url}/dev/idp/oidc" and claims["aud"] == "broker-demo"
    assert claims["nonce"] == "n-1" and claims["email"] == "ada@example.org"
    info = requests.get(f"{demo.url}/dev/idp/oidc/userinfo", timeout=10,
                        headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200 and info.json()["sub"] == claims["sub"]
    again = requests.post(token_url, data={**form, "code": code}, auth=("broker-demo", secret), timeout=10)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_dev_op_refuses_unknown_clients_without_redirecting(demo: Demo) -> None:
    _, challenge = _pkce()
    for client_id, redirect_uri in (("broker-demo", "https://evil.example/cb"),
                                    ("someone-else", f"{demo.url}/t/demo/connections/dev-oidc/oidc/callback"),
                                    ("broker-demo", f"{demo.url}/t/demo/connections/dev-saml/oidc/callback")):
        r = requests.get(f"{demo.url}/dev/idp/oidc/authorize?" + urlencode({
            "client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code", "scope": "openid",
            "code_challenge": challenge, "code_challenge_method": "S256"}), allow_redirects=False, timeout=10)
        assert r.status_code == 400, (client_id, redirect_uri, r.status_code)


def test_restart_keeps_keys_and_reapplies_nothing(tmp_path: Path) -> None:
    port = free_port()
    first = start_demo(tmp_path, port)
    try:
        metadata = requests.get(f"{first.url}/dev/idp/saml/metadata", timeout=10).content
        jwks = requests.get(f"{first.url}/dev/idp/oidc/jwks", timeout=10).json()
        assert "+ tenant demo" in first.errors()
    finally:
        stop_demo(first)
    second = start_demo(tmp_path, port)
    try:
        assert "demo.yaml: no changes" in second.errors()
        assert requests.get(f"{second.url}/dev/idp/saml/metadata", timeout=10).content == metadata
        assert requests.get(f"{second.url}/dev/idp/oidc/jwks", timeout=10).json() == jwks
        assert sign_in(second, "dev-saml").status_code == 200
    finally:
        stop_demo(second)


# --- where the dev IdP may not exist --------------------------------------------------------------------------


def test_production_refuses_the_dev_idp() -> None:
    env = {"BROKER_ENV": "production", "BROKER_PUBLIC_URL": "https://sso.example.com",
           "BROKER_SECRET_KEY": "p" * 40, "BROKER_DEV_IDP": "true"}
    with pytest.raises(ConfigError, match="development IdP"):
        load_settings(env)
    assert load_settings({**env, "BROKER_DEV_IDP": "false"}).dev_idp is False
    assert load_settings({k: v for k, v in env.items() if k != "BROKER_DEV_IDP"}).dev_idp is False


def test_demo_command_refuses_production(tmp_path: Path) -> None:
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "broker", "demo", "--port", str(free_port())], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, env={**_env(), "BROKER_ENV": "production"},
    )
    assert proc.returncode == 2
    assert "BROKER_ENV=dev" in proc.stderr
    assert not (tmp_path / "broker-demo.db").exists()


def _app(tmp_path: Path, dev_idp: str) -> Any:
    from broker.app import create_app

    settings = load_settings({"BROKER_ENV": "dev", "BROKER_DEV_IDP": dev_idp,
                              "DATABASE_URL": f"sqlite:///{tmp_path / 'broker.db'}"})
    return create_app(settings)


@pytest.mark.parametrize("path", ["/dev/idp/", "/dev/idp/saml/metadata", "/dev/idp/oidc/jwks",
                                  "/dev/idp/oidc/.well-known/openid-configuration", "/dev/idp/login", "/demo"])
def test_dev_idp_and_demo_are_absent_when_disabled(tmp_path: Path, path: str) -> None:
    client = _app(tmp_path, "false").test_client()
    assert client.get(path).status_code == 404
    assert client.post("/dev/idp/oidc/token", data={"grant_type": "authorization_code"}).status_code == 404
    assert not (tmp_path / ".broker-dev").exists()


def test_dev_idp_keys_live_next_to_the_database(tmp_path: Path) -> None:
    client = _app(tmp_path, "true").test_client()
    assert not (tmp_path / ".broker-dev").exists()  # nothing is created until the dev IdP is used
    r = client.get("/dev/idp/saml/metadata")
    assert r.status_code == 200 and b"X509Certificate" in r.data
    assert (tmp_path / ".broker-dev" / "dev-idp-keys.json").is_file()


def test_config_files_substitute_environment_variables(tmp_path: Path) -> None:
    from broker.admin.apply import ConfigFileError, load_specs

    path = tmp_path / "t.yaml"
    path.write_text("tenants:\n  - slug: demo\n    name: ${TENANT_NAME} tenant\n"
                    "    apps:\n      - {client_id: app-a, name: A, public: true, redirect_uris: ['${URL}/cb']}\n")
    _, tenants = load_specs(path, {"TENANT_NAME": "Demo", "URL": "http://127.0.0.1:9"})
    assert tenants[0].name == "Demo tenant"
    assert tenants[0].apps[0].body.redirect_uris == ["http://127.0.0.1:9/cb"]
    with pytest.raises(ConfigFileError) as err:
        load_specs(path, {"TENANT_NAME": "Demo"})
    assert err.value.path == "tenants[0].apps[0].redirect_uris[0]"
    assert "environment variable URL is not set" in err.value.problem
