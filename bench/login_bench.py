"""Full SAML logins against a running broker over HTTP, at several concurrencies.

    python bench/login_bench.py --url http://127.0.0.1:8000 --admin-key KEY [--server-pid PID]
                                [--concurrency 1,8,32] [--duration 20] [--tenants N] [--spread]

Per login (one cookie jar, cleared between logins so that no broker SSO session short-cuts the next one):
  1. GET  {T}/authorize?client_id&redirect_uri&response_type=code&scope=openid email profile&state&nonce
          &code_challenge(S256)&connection=<slug>   -> 302 to the IdP, HTTP-Redirect binding
  2. (client side, not timed as HTTP) inflate the SAMLRequest, read its ID, build a signed Response for it
     with tests/samlxml/idp_fixtures.build_response (signxml: an independent signer)
  3. POST {T}/connections/<slug>/saml/acs  SAMLResponse + RelayState -> 302 to redirect_uri?code&state
  4. POST {T}/token  client_secret_basic, code, code_verifier -> JSON with an ID token (nonce checked)

Setup is done with the admin API: a tenant, a SAML connection whose IdP metadata (EntityDescriptor with
the test IdP's certificate) is built here, and an app. `--tenants N` first seeds N more tenants, each with
its own connection and app (idempotent: re-running skips what exists), to show that the per-login cost
does not grow with the number of tenants; `--spread` spreads the logins over all of them.

Server CPU is read from /proc/<pid>/stat (utime + stime) of the whole process tree of `--server-pid`
(default: the process listening on the URL's port, walked up to the gunicorn master) before and after
each run. Run by hand; never part of the test suite. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import secrets
import statistics
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.samlxml import idp_fixtures  # noqa: E402
from tests.samlxml.idp_fixtures import Idp, build_response, make_idp, to_post_binding  # noqa: E402

MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
IDP_ENTITY_ID = "https://idp.bench.example/saml"
IDP_SSO = "https://idp.bench.example/sso"
REDIRECT_URI = "https://app.bench.example/callback"
SEED_SECRET = "bench-client-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- setup through the admin API ------------------------------------------------------------------------


def idp_metadata_xml(idp: Idp) -> str:
    """The IdP's EntityDescriptor: its signing certificate and SSO endpoints (Redirect and POST)."""
    cert = "".join(line for line in idp.cert_pem.splitlines() if not line.startswith("-----"))
    sso = "".join(f'<md:SingleSignOnService Binding="{b}" Location="{IDP_SSO}"/>' for b in (REDIRECT, POST))
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="{DS}" entityID="{idp.entity_id}">'
        f'<md:IDPSSODescriptor protocolSupportEnumeration="{SAMLP}" WantAuthnRequestsSigned="false">'
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}'
        f"</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        f"<md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>"
        f"{sso}</md:IDPSSODescriptor></md:EntityDescriptor>"
    )


@dataclass(frozen=True)
class Target:
    """One tenant ready for logins."""

    tenant: str
    issuer: str  # {T}
    connection: str
    acs_url: str
    audience: str  # SP entityID
    client_id: str
    client_secret: str
    email_domain: str
    style: str = "okta"  # idp_fixtures Response style: okta (Response and Assertion signed), entra (Assertion)

    @property
    def basic_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()


class Admin:
    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/") + "/admin/v1"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        r = self.http.request(method, self.url + path, json=body, timeout=60)
        if r.status_code not in ok:
            raise SystemExit(f"admin API {method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None


def ensure_target(admin: Admin, public_url: str, slug: str, idp: Idp, metadata: str) -> Target:
    """Create (or reuse) tenant `slug` with connection `idp` and app `bench-<slug>`; idempotent."""
    domain = f"{slug}.bench.example"
    admin.call("POST", "/tenants", {"slug": slug, "name": f"Bench {slug}"}, ok=(201, 409))
    conn = admin.call("GET", f"/tenants/{slug}/connections/idp", ok=(200, 404))
    if conn is not None and "sp" in conn:
        if not trusts(conn, idp):  # a new test IdP key (every run without --idp-key): trust this one
            r = admin.http.put(f"{admin.url}/tenants/{slug}/connections/idp/metadata", data=metadata.encode(),
                               headers={"Content-Type": "application/samlmetadata+xml"}, timeout=60)
            if r.status_code != 200:
                raise SystemExit(f"admin API PUT metadata of {slug} -> {r.status_code}: {r.text[:500]}")
    else:
        conn = admin.call("POST", f"/tenants/{slug}/connections", {
            "slug": "idp", "protocol": "saml", "domains": [domain],
            "mapping": {"preset": "okta", "rules": []},
            "saml": {"metadata_xml": metadata},
        })
    client_id = f"bench-{slug}"
    app = admin.call("GET", f"/tenants/{slug}/apps/{client_id}", ok=(200, 404))
    if app is None or "client_id" not in app:
        admin.call("POST", f"/tenants/{slug}/apps", {
            "name": f"bench app {slug}", "redirect_uris": [REDIRECT_URI], "client_id": client_id,
            "client_secret": SEED_SECRET,
        })
    return Target(
        tenant=slug,
        issuer=f"{public_url.rstrip('/')}/t/{slug}",
        connection="idp",
        acs_url=conn["sp"]["acs_url"],
        audience=conn["sp"]["entity_id"],
        client_id=client_id,
        client_secret=SEED_SECRET,
        email_domain=domain,
    )


def cert_fingerprint(cert_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def trusts(conn: dict[str, Any], idp: Idp) -> bool:
    """Whether the connection (admin API JSON) already trusts this IdP's signing certificate."""
    certs = (conn.get("metadata") or {}).get("signing_certificates") or []
    return cert_fingerprint(idp.cert_pem) in {c.get("fingerprint") for c in certs}


def load_idp(path: Path | None) -> Idp:
    """The test IdP: a fresh key, or with --idp-key the one kept in that file (created on first use), so that
    a re-run against an already seeded database need not upload new metadata to every tenant."""
    if path is None:
        return make_idp(IDP_ENTITY_ID)
    if path.exists():
        saved = json.loads(path.read_text())
        return Idp(entity_id=IDP_ENTITY_ID, key_pem=saved["key_pem"].encode(), cert_pem=saved["cert_pem"])
    idp = make_idp(IDP_ENTITY_ID)
    path.write_text(json.dumps({"key_pem": idp.key_pem.decode(), "cert_pem": idp.cert_pem}))
    path.chmod(0o600)
    return idp


def seeded_target(public_url: str, slug: str) -> Target:
    """The Target that ensure_target would return for an already seeded tenant, without asking the server."""
    base = f"{public_url.rstrip('/')}/t/{slug}"
    return Target(tenant=slug, issuer=base, connection="idp", acs_url=f"{base}/connections/idp/saml/acs",
                  audience=f"{base}/connections/idp/saml/metadata", client_id=f"bench-{slug}",
                  client_secret=SEED_SECRET, email_domain=f"{slug}.bench.example")


def seed(admin_key: str, public_url: str, count: int, idp: Idp, metadata: str, workers: int) -> list[Target]:
    if count <= 0:
        return []
    done = 0
    started = time.perf_counter()
    lock = threading.Lock()
    # One Admin (requests.Session) per thread.
    local = threading.local()

    def one(i: int) -> Target:
        nonlocal done
        if not hasattr(local, "admin"):
            local.admin = Admin(public_url, admin_key)
        t = ensure_target(local.admin, public_url, f"seed-{i:05d}", idp, metadata)
        with lock:
            done += 1
            if done % 100 == 0 or done == count:
                rate = done / (time.perf_counter() - started)
                print(f"  seeded {done}/{count} tenants ({rate:.1f}/s)", file=sys.stderr, flush=True)
        return t

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def use_cached_signing_key() -> None:
    """Make idp_fixtures sign with its private key parsed once (same signxml signer, same XML).

    idp_fixtures hands signxml the PEM, which `cryptography` parses and checks on every signature (~35 ms
    for RSA-2048); on a two-core box that client work would starve the server being measured.
    """
    from functools import lru_cache

    from cryptography.hazmat.primitives import serialization
    from signxml import XMLSigner, methods

    @lru_cache(maxsize=8)
    def key(pem: bytes) -> Any:
        return serialization.load_pem_private_key(pem, None)

    slow = idp_fixtures.sign_element

    def sign_element(element: Any, idp: Idp, *, signature_algorithm: str = "rsa-sha256",
                     digest_algorithm: str = "sha256") -> Any:
        if "sha1" in signature_algorithm + digest_algorithm:
            return slow(element, idp, signature_algorithm=signature_algorithm, digest_algorithm=digest_algorithm)
        signer = XMLSigner(method=methods.enveloped, signature_algorithm=signature_algorithm,
                           digest_algorithm=digest_algorithm, c14n_algorithm=idp_fixtures.EXC_C14N)
        return signer.sign(element, key=key(idp.key_pem), cert=idp.cert_pem,
                           reference_uri="#" + element.get("ID", ""), id_attribute="ID")

    idp_fixtures.sign_element = sign_element


def use_xmlsec_signer() -> None:
    """Make idp_fixtures sign with python-xmlsec (libxmlsec1's signing template path), key parsed once.

    The same enveloped exc-c14n RSA-SHA256 signature as the signxml signer, at about two thirds of its
    client CPU (0.6 ms instead of 0.95 ms per signature here): the lightest real signer for a load generator
    that shares the server's cores.
    """
    from functools import lru_cache

    import xmlsec

    @lru_cache(maxsize=8)
    def key(pem: bytes, cert: str) -> Any:
        k = xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatPem, None)
        k.load_cert_from_memory(cert.encode(), xmlsec.constants.KeyDataFormatCertPem)
        return k

    slow = idp_fixtures.sign_element
    c = xmlsec.constants

    def sign_element(element: Any, idp: Idp, *, signature_algorithm: str = "rsa-sha256",
                     digest_algorithm: str = "sha256") -> Any:
        if (signature_algorithm, digest_algorithm) != ("rsa-sha256", "sha256"):
            return slow(element, idp, signature_algorithm=signature_algorithm, digest_algorithm=digest_algorithm)
        tmpl = xmlsec.template.create(element, c.TransformExclC14N, c.TransformRsaSha256, ns="ds")
        placeholder = element.find(f"{{{DS}}}Signature")
        if placeholder is not None:
            placeholder.addprevious(tmpl)
            element.remove(placeholder)
        else:
            element.append(tmpl)
        ref = xmlsec.template.add_reference(tmpl, c.TransformSha256, uri="#" + element.get("ID", ""))
        xmlsec.template.add_transform(ref, c.TransformEnveloped)
        xmlsec.template.add_transform(ref, c.TransformExclC14N)
        xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(tmpl))
        ctx = xmlsec.SignatureContext()
        ctx.key = key(idp.key_pem, idp.cert_pem)
        ctx.register_id(element, "ID")
        ctx.sign(tmpl)
        return element

    idp_fixtures.sign_element = sign_element


class HttpFailed(Exception):
    pass


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class LoginHttp:
    """One keep-alive HTTP/1.1 connection per thread (http.client): a few hundred microseconds of client
    CPU per request, where `requests` spends about a millisecond. Cookies are carried by hand: the only one a
    login needs is the browser-binding cookie set by /authorize and sent back to the ACS."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise SystemExit("the benchmark client speaks plain http to the broker under test")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        path = urlsplit(url)._replace(scheme="", netloc="").geturl()
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                return Reply(r.status, r.headers, r.read())
            except (http.client.HTTPException, OSError) as e:
                self.conn.close()
                self.conn = None
                if attempt == 2:  # a kept-alive connection the server closed is retried once
                    raise HttpFailed(f"{method} {path[:80]}: {type(e).__name__}: {e}") from e
        raise AssertionError("unreachable")


def _form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


def _post_binding_form(saml_response_b64: str, relay_state: str) -> bytes:
    """SAMLResponse=...&RelayState=... without urlencode's per-character quoting of ~8 KB of base64 (whose
    only reserved characters are + / =)."""
    value = saml_response_b64.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    return f"SAMLResponse={value}&{urlencode({'RelayState': relay_state})}".encode()


# --- one login --------------------------------------------------------------------------------------------


class LoginFailed(Exception):
    pass


@dataclass
class Timings:
    authorize: list[float] = field(default_factory=list)
    acs: list[float] = field(default_factory=list)
    token: list[float] = field(default_factory=list)
    login: list[float] = field(default_factory=list)  # the three HTTP steps together
    signing: list[float] = field(default_factory=list)  # client-side Response signing (not in `login`)
    errors: list[str] = field(default_factory=list)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _location(r: Reply, step: str) -> str:
    location = r.headers.get("Location")
    if r.status != 302 or not location:
        raise LoginFailed(f"{step}: expected 302, got {r.status}: {r.body[:300]!r}")
    return location


def authn_request_id(location: str) -> tuple[str, str]:
    """(AuthnRequest ID, RelayState) from an HTTP-Redirect binding URL (SAML bindings §3.4.4.1)."""
    query = parse_qs(urlsplit(location).query)
    if "SAMLRequest" not in query:
        raise LoginFailed(f"authorize: redirect carries no SAMLRequest: {location[:200]}")
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    request_id = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True)).get("ID")
    if not request_id:
        raise LoginFailed("authorize: AuthnRequest has no ID")
    return request_id, query.get("RelayState", [""])[0]


def _cookies(r: Reply) -> str:
    """The Cookie header a browser would send back (name=value of each Set-Cookie; paths are all /t/...)."""
    return "; ".join(c.split(";", 1)[0].strip() for c in r.headers.get_all("Set-Cookie") or [])


def login_once(http: LoginHttp, target: Target, idp: Idp, n: int, out: Timings) -> None:
    verifier, challenge = _pkce()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {
        "client_id": target.client_id, "redirect_uri": REDIRECT_URI, "response_type": "code",
        "scope": "openid email profile", "state": state, "nonce": nonce,
        "code_challenge": challenge, "code_challenge_method": "S256", "connection": target.connection,
    }
    t0 = time.perf_counter()
    r = http.request("GET", f"{target.issuer}/authorize?{urlencode(params)}")
    t1 = time.perf_counter()
    request_id, relay_state = authn_request_id(_location(r, "authorize"))
    cookie = _cookies(r)
    if not cookie:
        raise LoginFailed("authorize: no browser-binding cookie was set")

    s0 = time.perf_counter()
    xml = build_response(idp, acs_url=target.acs_url, audience=target.audience, in_response_to=request_id,
                         name_id=f"user{n}@{target.email_domain}", style=target.style)
    form = _post_binding_form(to_post_binding(xml), relay_state)
    s1 = time.perf_counter()

    r = http.request("POST", target.acs_url, form, {
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
    t2 = time.perf_counter()
    back = urlsplit(_location(r, "acs"))
    query = parse_qs(back.query)
    if f"{back.scheme}://{back.netloc}{back.path}" != REDIRECT_URI or "code" not in query:
        raise LoginFailed(f"acs: redirect without a code: {r.headers['Location'][:300]}")
    if query.get("state") != [state]:
        raise LoginFailed("acs: state not echoed")

    t3 = time.perf_counter()
    r = http.request("POST", f"{target.issuer}/token", _form({
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }), {"Content-Type": "application/x-www-form-urlencoded", "Authorization": target.basic_auth})
    t4 = time.perf_counter()
    if r.status != 200:
        raise LoginFailed(f"token: {r.status}: {r.body[:300]!r}")
    claims = _jwt_claims(json.loads(r.body)["id_token"])
    if claims.get("nonce") != nonce or claims.get("iss") != target.issuer:
        raise LoginFailed(f"token: unexpected ID token claims {claims}")

    out.authorize.append(t1 - t0)
    out.acs.append(t2 - s1)
    out.token.append(t4 - t3)
    out.login.append((t1 - t0) + (t2 - s1) + (t4 - t3))
    out.signing.append(s1 - s0)


# --- server process tree ----------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+stime ticks, rss bytes) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_and_rss(root: int) -> tuple[float, int]:
    """(CPU seconds used so far, current RSS bytes) summed over the tree."""
    ticks = rss = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st is not None:
            ticks += st[1]
            rss += st[2]
    return ticks / CLK_TCK, rss


def tree_hwm(root: int) -> int:
    """Sum of the kernel's per-process peak RSS (VmHWM) over the tree, in bytes."""
    total = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def listening_pid(port: int) -> int | None:
    """The process that listens on `port` (via /proc/net/tcp* inodes), walked up to the gunicorn master."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    owners = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    owners.add(int(entry))
                    break
        except OSError:
            continue
    if not owners:
        return None
    # gunicorn workers inherit the listening socket: the master is the owner whose parent owns none.
    for pid in owners:
        st = _stat(pid)
        if st is not None and st[0] not in owners:
            return pid
    return min(owners)


class RssSampler(threading.Thread):
    def __init__(self, root: int | None, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.peak = root, every, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.root is not None and not self._stop_event.is_set():
            self.peak = max(self.peak, tree_cpu_and_rss(self.root)[1])
            self._stop_event.wait(self.every)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


# --- a run at one concurrency -----------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def run_level(targets: list[Target], idp: Idp, concurrency: int, duration: float, max_logins: int | None,
              server: int | None) -> dict[str, Any]:
    per_thread = [Timings() for _ in range(concurrency)]
    deadline = time.perf_counter() + duration
    counter = iter(range(10**12))
    lock = threading.Lock()

    def worker(i: int) -> None:
        http = LoginHttp(targets[0].issuer)
        out = per_thread[i]
        while time.perf_counter() < deadline:
            with lock:
                n = next(counter)
            if max_logins is not None and n >= max_logins:
                return
            target = targets[n % len(targets)]
            try:
                login_once(http, target, idp, n, out)
            except (LoginFailed, HttpFailed, KeyError, ValueError) as e:
                out.errors.append(f"{type(e).__name__}: {e}")
                if len(out.errors) >= 20:
                    return

    cpu0, _ = tree_cpu_and_rss(server) if server else (0.0, 0)
    sampler = RssSampler(server)
    sampler.start()
    client0 = os.times()
    wall0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - wall0
    client1 = os.times()
    peak = sampler.stop()
    cpu1, _ = tree_cpu_and_rss(server) if server else (0.0, 0)

    t = Timings()
    for th in per_thread:
        for name in ("authorize", "acs", "token", "login", "signing", "errors"):
            getattr(t, name).extend(getattr(th, name))
    n = len(t.login)
    ms = 1000.0
    result: dict[str, Any] = {
        "concurrency": concurrency, "logins": n, "errors": len(t.errors), "seconds": round(wall, 2),
        "logins_per_s": round(n / wall, 1) if wall else 0.0,
        "client_cpu_ms_per_login": round((client1.user + client1.system - client0.user - client0.system)
                                         * ms / n, 1) if n else None,
        "signing_ms_p50": round(pct(t.signing, 50) * ms, 1) if n else None,
        "signing_ms_mean": round(statistics.fmean(t.signing) * ms, 1) if n else None,
    }
    for step in ("authorize", "acs", "token", "login"):
        values = getattr(t, step)
        result[f"{step}_ms_p50"] = round(pct(values, 50) * ms, 1)
        result[f"{step}_ms_p99"] = round(pct(values, 99) * ms, 1)
    if server:
        result["server_cpu_ms_per_login"] = round((cpu1 - cpu0) * ms / n, 1) if n else None
        result["server_peak_rss_mib"] = round(peak / 2**20, 1)
        result["server_sum_vmhwm_mib"] = round(tree_hwm(server) / 2**20, 1)
        result["server_processes"] = len(process_tree(server))
    if t.errors:
        result["first_errors"] = sorted(set(t.errors))[:3]
    return result


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [("conc", "concurrency"), ("logins", "logins"), ("err", "errors"), ("login/s", "logins_per_s"),
            ("auth p50", "authorize_ms_p50"), ("auth p99", "authorize_ms_p99"),
            ("acs p50", "acs_ms_p50"), ("acs p99", "acs_ms_p99"),
            ("tok p50", "token_ms_p50"), ("tok p99", "token_ms_p99"),
            ("login p50", "login_ms_p50"), ("login p99", "login_ms_p99"),
            ("sign ms", "signing_ms_p50"), ("srv cpu ms", "server_cpu_ms_per_login"),
            ("cli cpu ms", "client_cpu_ms_per_login"), ("peak rss MiB", "server_peak_rss_mib")]
    print("  ".join(f"{h:>10}" for h, _ in cols))
    for row in rows:
        print("  ".join(f"{row.get(k, '-')!s:>10}" for _, k in cols))
    for row in rows:
        for err in row.get("first_errors", []):
            print(f"  error at concurrency {row['concurrency']}: {err}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Full SAML login benchmark against a running broker.")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the broker's BROKER_PUBLIC_URL")
    p.add_argument("--admin-key", default=os.environ.get("BROKER_BOOTSTRAP_ADMIN_KEY"),
                   help="a global admin key (default: $BROKER_BOOTSTRAP_ADMIN_KEY)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client thread counts")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level")
    p.add_argument("--max-logins", type=int, default=None, help="stop a level after this many logins")
    p.add_argument("--warmup", type=int, default=20, help="untimed logins first (caches, pools, JIT-free)")
    p.add_argument("--tenants", type=int, default=0, help="seed this many extra tenants first")
    p.add_argument("--seed-workers", type=int, default=4, help="parallel admin API clients when seeding")
    p.add_argument("--spread", action="store_true",
                   help="spread logins over every bench tenant (default: all logins to one tenant)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="gunicorn master PID (default: the process listening on the URL's port)")
    p.add_argument("--tenant", default="bench", help="slug of the measured tenant")
    p.add_argument("--signer", choices=("xmlsec", "signxml", "signxml-uncached"), default="xmlsec",
                   help="xmlsec: python-xmlsec, key parsed once (lightest); signxml: idp_fixtures' signxml "
                        "signer, key parsed once; signxml-uncached: idp_fixtures unchanged (~35 ms a signature)")
    p.add_argument("--style", choices=("okta", "entra"), default="okta",
                   help="okta: Response and Assertion signed; entra: only the Assertion signed")
    p.add_argument("--assume-seeded", action="store_true",
                   help="the --tenants seed tenants exist and trust the --idp-key IdP (a previous run set them "
                        "up): skip the admin API calls that would check them")
    p.add_argument("--idp-key", type=Path, default=None,
                   help="keep the test IdP's key and certificate in this file and reuse them in later runs "
                        "(tenants that already trust it are not sent new metadata)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if not args.admin_key:
        p.error("--admin-key (or BROKER_BOOTSTRAP_ADMIN_KEY) is required")

    if args.signer == "xmlsec":
        use_xmlsec_signer()
    elif args.signer == "signxml":
        use_cached_signing_key()
    url = args.url.rstrip("/")
    server = args.server_pid or listening_pid(urlsplit(url).port or 80)
    if server is None:
        print("note: no server PID found; CPU and RSS are not reported (use --server-pid)", file=sys.stderr)

    idp = load_idp(args.idp_key)
    metadata = idp_metadata_xml(idp)
    admin = Admin(url, args.admin_key)
    main_target = ensure_target(admin, url, args.tenant, idp, metadata)
    if args.assume_seeded:
        seeded = [seeded_target(url, f"seed-{i:05d}") for i in range(args.tenants)]
    else:
        seeded = seed(args.admin_key, url, args.tenants, idp, metadata, args.seed_workers)
    tenant_count = len(admin.call("GET", "/tenants")["tenants"])
    targets = [replace(t, style=args.style) for t in ([main_target, *seeded] if args.spread else [main_target])]
    print(f"broker {url}, server pid {server}, {tenant_count} tenants in the database, logins over "
          f"{len(targets)} tenant(s), {args.style}-style Responses signed with {args.signer}", file=sys.stderr)

    warm = Timings()
    http = LoginHttp(url)
    for i in range(args.warmup):
        try:
            login_once(http, targets[i % len(targets)], idp, -1 - i, warm)
        except (LoginFailed, HttpFailed, KeyError, ValueError) as e:
            print(f"warm-up login failed: {type(e).__name__}: {e}", file=sys.stderr)
            return 1

    rows = []
    for level in (int(c) for c in args.concurrency.split(",")):
        row = run_level(targets, idp, level, args.duration, args.max_logins, server)
        row["tenants_in_db"] = tenant_count
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
