"""The floor: what three login requests cost on this stack before any broker logic runs. Run by hand.

    python bench/floor.py [--mode bare|crypto|both] [--workers 2] [--threads 4] [--concurrency 1,32]
                          [--duration 15] [--port 8766]

Serves a stand-in for the three login endpoints with gunicorn, configured as `broker serve` configures it
(broker.serving.ThreadWorker, keep-alive 5 s, no access log), and drives it like bench/login_bench.py does
(one keep-alive http.client connection per thread, GET then POST then POST). It prints logins/s and the
server's CPU per login (the whole gunicorn tree, from /proc), which is the part of bench/login_bench.py's
`srv cpu ms` that no change to the broker's own code can remove:

- `bare`: each endpoint answers at once (a 302, a 302, a small JSON body): gunicorn + Flask + HTTP parsing,
  three times;
- `crypto`: the same plus the cryptography a login needs, with keys parsed once: the ACS parses an okta-style
  Response (Response and Assertion signed, ~8 KB of base64) with lxml and verifies both signatures with
  xmlsec, and the token endpoint signs two RS256 JWTs (ID token and access token) with joserfc. No state
  store, no database, no claim checks, no logging.

Compare with bench/run.sh on the same machine in the same minutes: this VM's speed varies from day to day.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ACS = "https://broker.floor.example/acs"
AUDIENCE = "https://broker.floor.example/sp"
IDP_ID = "https://idp.floor.example/saml"
FIXTURE_DIR = Path(os.environ.get("FLOOR_FIXTURE_DIR", "/tmp"))


# --- the server side (imported by gunicorn as bench.floor:app) ------------------------------------------


def _fixture_paths() -> tuple[Path, Path, Path]:
    """The signed Response (base64), the IdP certificate and the token-signing key, written by the client."""
    return (FIXTURE_DIR / "broker-floor-response.b64", FIXTURE_DIR / "broker-floor-idp-cert.pem",
            FIXTURE_DIR / "broker-floor-signer.pem")


def make_app(mode: str) -> Any:
    from flask import Flask, Response, jsonify, request

    app = Flask("floor")
    crypto = mode == "crypto"
    if crypto:
        import xmlsec
        from joserfc import jwt
        from joserfc.jwk import RSAKey
        from lxml import etree

        response_path, cert_path, signer_path = _fixture_paths()
        cert = xmlsec.Key.from_memory(cert_path.read_bytes(), xmlsec.constants.KeyDataFormatCertPem, None)
        signer = RSAKey.import_key(signer_path.read_bytes())
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        ds = "{http://www.w3.org/2000/09/xmldsig#}Signature"

        def verify(document: bytes) -> None:
            root = etree.fromstring(document, parser=parser)
            xmlsec.tree.add_ids(root, ["ID"])
            signatures = list(root.iter(ds))
            assert len(signatures) == 2, len(signatures)
            for signature in signatures:
                ctx = xmlsec.SignatureContext()
                ctx.key = cert
                ctx.verify(signature)

        def sign(claims: dict[str, Any]) -> str:
            return jwt.encode({"alg": "RS256", "kid": "floor"}, claims, signer, algorithms=["RS256"])

    @app.get("/authorize")
    def authorize() -> Response:
        request_xml = f'<samlp:AuthnRequest ID="_{secrets.token_hex(20)}"/>'.encode()
        deflated = base64.b64encode(zlib.compress(request_xml)[2:-4]).decode()
        resp = Response(status=302)
        resp.headers["Location"] = f"https://idp.floor.example/sso?SAMLRequest={deflated}&RelayState=r"
        return resp

    @app.post("/acs")
    def acs() -> Response:
        encoded = request.form["SAMLResponse"]
        if crypto:
            verify(base64.b64decode(encoded))
        resp = Response(status=302)
        resp.headers["Location"] = f"https://app.floor.example/cb?code={secrets.token_urlsafe(32)}&state=s"
        return resp

    @app.post("/token")
    def token() -> Response:
        now = int(time.time())
        claims = {"iss": "https://broker.floor.example/t/x", "sub": "s" * 43, "aud": "app", "iat": now,
                  "exp": now + 300, "nonce": "n" * 22, "email": "user@example.com"}
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": 300}
        if crypto:
            body["access_token"] = sign({**claims, "scope": "openid email profile", "jti": secrets.token_hex(8)})
            body["id_token"] = sign(claims)
        else:
            body["access_token"] = body["id_token"] = secrets.token_urlsafe(32)
        return jsonify(body)

    return app


app = make_app(os.environ.get("FLOOR_MODE", "bare")) if os.environ.get("FLOOR_SERVING") else None


# --- the client side --------------------------------------------------------------------------------------


def write_fixture() -> None:
    """One okta-style Response signed by a test IdP (tests/samlxml/idp_fixtures), its certificate, and an RSA
    key for the token signatures."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.samlxml.idp_fixtures import build_response, make_idp

    idp = make_idp(IDP_ID)
    xml = build_response(idp, acs_url=ACS, audience=AUDIENCE, in_response_to="_r", style="okta")
    response_path, cert_path, signer_path = _fixture_paths()
    response_path.write_bytes(base64.b64encode(xml))
    cert_path.write_text(idp.cert_pem)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))


def run_level(port: int, server_pid: int, concurrency: int, duration: float, form: bytes) -> dict[str, float]:
    from login_bench import LoginHttp, tree_cpu_and_rss

    stop = time.monotonic() + duration
    counts = [0] * concurrency
    errors: list[str] = []

    def worker(i: int) -> None:
        http = LoginHttp(f"http://127.0.0.1:{port}")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        while time.monotonic() < stop:
            replies = (http.request("GET", "/authorize?client_id=app&state=s"),
                       http.request("POST", "/acs", form, headers),
                       http.request("POST", "/token", b"grant_type=authorization_code&code=c", headers))
            if [r.status for r in replies] != [302, 302, 200]:
                errors.append(str([r.status for r in replies]))
                return
            counts[i] += 1

    cpu0, _ = tree_cpu_and_rss(server_pid)
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    cpu1, _ = tree_cpu_and_rss(server_pid)
    if errors:
        raise SystemExit(f"failed logins: {errors[:3]}")
    logins = sum(counts)
    return {"concurrency": concurrency, "logins": logins, "logins_per_s": logins / seconds,
            "server_cpu_ms_per_login": (cpu1 - cpu0) * 1000 / max(1, logins)}


def serve(mode: str, workers: int, threads: int, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLOOR_SERVING": "1", "FLOOR_MODE": mode, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
           "--worker-class", "broker.serving.ThreadWorker", "--threads", str(threads), "--keep-alive", "5",
           "--log-level", "warning", "bench.floor:app"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    import http.client

    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/authorize")
            if c.getresponse().status == 302:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the floor server did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="both", choices=("bare", "crypto", "both"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--port", type=int, default=8766)
    args = p.parse_args(argv)
    write_fixture()
    response_path, _, _ = _fixture_paths()
    b64 = response_path.read_text()
    form = ("SAMLResponse=" + b64.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
            + "&RelayState=r").encode()
    modes = ("bare", "crypto") if args.mode == "both" else (args.mode,)
    print(f"{'mode':<8} {'conc':>5} {'logins':>8} {'login/s':>9} {'srv cpu ms':>11}")
    for mode in modes:
        proc = serve(mode, args.workers, args.threads, args.port)
        try:
            run_level(args.port, proc.pid, 1, 2.0, form)  # warm-up
            for c in (int(x) for x in args.concurrency.split(",")):
                row = run_level(args.port, proc.pid, c, args.duration, form)
                print(f"{mode:<8} {c:>5} {row['logins']:>8.0f} {row['logins_per_s']:>9.1f} "
                      f"{row['server_cpu_ms_per_login']:>11.2f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
