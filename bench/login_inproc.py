"""Full logins in one process, no HTTP server: where the broker's own CPU goes, request by request.

    python bench/login_inproc.py [--logins 500] [--redis URL] [--database URL] [--profile FILE]
                                 [--alg RS256|ES256] [--style okta|entra] [--stdin] [--instructions]

The same three requests as bench/login_bench.py (authorize -> ACS with a Response signed by an independent
signer for the actual AuthnRequest -> token), sent through Flask's WSGI test client to the app that
`broker serve` runs (create_app with the given database and state store), so that gunicorn, the network and
the load generator are left out. Prints the CPU time (time.process_time) of each step; the client work
(signing, building the WSGI environ) is timed apart and subtracted where it is inside a step.
`--profile FILE` writes a cProfile of the app's own work in the three steps (the WSGI test client left out),
for `python -m pstats FILE` or snakeviz.
`--instructions` runs the same logins under valgrind's callgrind with event collection on only inside the app's
request handling (through bench/callgrind_toggle.c, compiled with cc on first use) and prints the instructions the
app executed per login, each step and in all: unlike CPU time, the same code, inputs and configuration give
the same count (within about 1% per login, 2% per step) however busy or slow the machine is, so two
revisions can be compared in one run each. Expect about 50 times the native run time (20 logins: a few
minutes). `--callgrind-out DIR` keeps callgrind's dumps, one per request, for
`callgrind_annotate --inclusive=yes DIR/callgrind.out.N` (counts per C function).

Defaults: a temporary SQLite database and the in-process state store; `--redis redis://127.0.0.1:6379/14`
(flushed first) and `--database postgresql://...` measure the production stores. Run by hand.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from login_bench import REDIRECT_URI, SEED_SECRET, _pkce, idp_metadata_xml, use_xmlsec_signer  # noqa: E402

from tests.samlxml.idp_fixtures import build_response, make_idp, to_post_binding  # noqa: E402

# BENCH_BROKER_TREE: another checkout whose `broker` package to measure (bench/compare.py). Put on the path
# after the imports above, so the client side (signer, fixtures) stays this checkout's and both sides of a
# comparison send the same requests; `broker` itself is imported only in make_app().
_TREE = os.environ.get("BENCH_BROKER_TREE")
if _TREE:
    sys.path.insert(0, str(Path(_TREE).resolve()))

PUBLIC = "http://127.0.0.1:8765"

# --breakdown: CPU (time.process_time) spent inside each of these per login, outermost call only
BREAKDOWN = (
    "broker.samlxml.response:verify_response",
    "broker.samlxml.dsig:verify_signed_element",
    "broker.upstream.saml:SamlConnector.begin",
    "broker.upstream.saml:SamlConnector.complete",
    "broker.issuer.tokens:TokenCodec.sign",
    "broker.issuer.server:Issuer.token",
    "broker.issuer.server:Issuer.authorization_response",
    "broker.login:LoginService.begin",
    "broker.login:LoginService.finish",
    "broker.claims.pipeline:apply",
    "broker.audit:Auditor.emit",
    "broker.store.config_repo:SqlConfigStore.record",
    "broker.store.cached:CachedConfigStore._generation",
    "broker.store.state_redis:RedisStateStore.put",
    "broker.store.state_redis:RedisStateStore.get",
    "broker.store.state_redis:RedisStateStore.take",
    "broker.store.state_redis:RedisStateStore.add_if_absent",
    "broker.store.state_redis:RedisStateStore._put_all",
    "logging:Logger._log",
    "flask.app:Flask.wsgi_app",
    "flask.app:Flask.dispatch_request",
)


def instrument(names: tuple[str, ...]) -> dict[str, list[float]]:
    """Wrap each module:qualname function to add its CPU time to a counter (nested calls of the same
    function count once)."""
    import functools
    import importlib

    totals: dict[str, list[float]] = {}
    for name in names:
        module_name, qual = name.split(":")
        owner: Any = importlib.import_module(module_name)
        parts = qual.split(".")
        for part in parts[:-1]:
            owner = getattr(owner, part)
        original = getattr(owner, parts[-1])
        cell = totals.setdefault(name, [0.0, 0.0, 0.0])  # cpu seconds, calls, depth

        def wrapper(*a: Any, __orig: Any = original, __cell: list[float] = cell, **kw: Any) -> Any:
            __cell[2] += 1
            t0 = time.process_time()
            try:
                return __orig(*a, **kw)
            finally:
                __cell[2] -= 1
                if __cell[2] == 0:
                    __cell[0] += time.process_time() - t0
                    __cell[1] += 1

        setattr(owner, parts[-1], functools.wraps(original)(wrapper))
    return totals


UNDER_CALLGRIND = "BENCH_UNDER_CALLGRIND"  # set for the copy of this script that valgrind runs
STEPS = ("authorize", "acs", "token")


def toggle_library() -> Path:
    """bench/callgrind_toggle.c built into a shared library (cached in the temporary directory)."""
    source = ROOT / "bench" / "callgrind_toggle.c"
    out = Path(tempfile.gettempdir()) / f"broker-bench-toggle-{int(source.stat().st_mtime)}.so"
    if not out.exists():
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("--instructions needs a C compiler (cc) to build bench/callgrind_toggle.c")
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    return out


def run_under_callgrind(argv: list[str], logins: int, keep: Path | None) -> int:
    """Run this script with `argv` under callgrind (collection off but for the app's work in measured logins,
    one dump per request) and print the instructions per login of each step, summed over the dumps."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
    library = toggle_library()
    with tempfile.TemporaryDirectory(prefix="broker-callgrind-") as tmp:
        where = keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
               f"--callgrind-out-file={where / 'callgrind.out'}", sys.executable, str(Path(__file__).resolve()),
               *argv]
        env = {**os.environ, UNDER_CALLGRIND: str(library)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"the run under valgrind failed (exit {done.returncode})")
        counts = dump_counts(where)
    for step in STEPS:
        print(f"{step:<10} {counts[step] / logins / 1e6:8.3f} M instructions per login")
    print(f"{'login':<10} {sum(counts.values()) / logins / 1e6:8.3f} M instructions per login, app only, "
          f"over {logins} logins")
    if keep:
        print(f"callgrind's dumps kept in {keep}, one per request (callgrind_annotate --inclusive=yes FILE)")
    return 0


def dump_counts(where: Path) -> dict[str, int]:
    """Instructions per step, summed over callgrind's dumps (`desc: Trigger: Client Request: <step>`)."""
    counts = dict.fromkeys(STEPS, 0)
    seen = dict.fromkeys(STEPS, 0)
    for path in where.glob("callgrind.out.*"):
        step, total = None, None
        for line in path.read_text().splitlines():
            if line.startswith("desc: Trigger: Client Request: "):
                step = line.rsplit(": ", 1)[1].strip()
            elif line.startswith("summary: "):
                total = int(line.split()[1])
        if step in counts and total is not None:
            counts[step] += total
            seen[step] += 1
    if len(set(seen.values())) != 1 or not seen["acs"]:
        raise SystemExit(f"callgrind's dumps do not hold the same number of requests of each step: {seen}")
    return counts


ADMIN_KEY = "inproc-admin-key-0123456789abcdef"


def make_app(database: str, redis_url: str | None) -> Any:
    from broker.app import create_app
    from broker.settings import load_settings

    env = {
        "BROKER_ENV": "dev", "BROKER_DEV_IDP": "false", "BROKER_PUBLIC_URL": PUBLIC, "DATABASE_URL": database,
        "BROKER_SECRET_KEY": "inproc-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "BROKER_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "BROKER_LOG_LEVEL": os.environ.get("BROKER_LOG_LEVEL", "INFO"),
    }
    if redis_url:
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        env["REDIS_URL"] = redis_url
    return create_app(load_settings(env))


def setup(client: Any, metadata: str, alg: str) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def call(method: str, path: str, body: Any) -> Any:
        r = client.open("/admin/v1" + path, method=method, json=body, headers=auth)
        if r.status_code not in (200, 201):
            raise SystemExit(f"{method} {path} -> {r.status_code} {r.get_data(as_text=True)[:300]}")
        return r.get_json()

    call("POST", "/tenants", {"slug": "bench", "name": "Bench"})
    conn = call("POST", "/tenants/bench/connections", {
        "slug": "idp", "protocol": "saml", "domains": ["bench.bench.example"],
        "mapping": {"preset": "okta", "rules": []}, "saml": {"metadata_xml": metadata}})
    call("POST", "/tenants/bench/apps", {"name": "bench", "redirect_uris": [REDIRECT_URI],
                                         "client_id": "bench-app", "client_secret": SEED_SECRET,
                                         "id_token_signed_response_alg": alg})
    return {"acs": conn["sp"]["acs_url"], "audience": conn["sp"]["entity_id"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logins", type=int, default=500)
    p.add_argument("--redis", default=None, help="REDIS_URL (flushed first); default: in-process store")
    p.add_argument("--database", default=None, help="DATABASE_URL; default: a temporary SQLite file")
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile of the three steps here")
    p.add_argument("--alg", default="RS256", help="the app's ID-token algorithm (the tenant needs a key of it)")
    p.add_argument("--breakdown", action="store_true", help="CPU per login inside the BREAKDOWN functions")
    p.add_argument("--style", default="okta", choices=("okta", "entra"),
                   help="okta: Response and Assertion signed; entra: Assertion signed")
    p.add_argument("--stdin", action="store_true",
                   help="after the warm-up, read a number K per line and answer each with K logins' CPU (JSON)")
    p.add_argument("--instructions", action="store_true",
                   help="count the app's instructions per login under valgrind's callgrind instead of CPU time")
    p.add_argument("--callgrind-out", type=Path, default=None, help="with --instructions: keep callgrind's output")
    args = p.parse_args(argv)
    toggle = os.environ.get(UNDER_CALLGRIND)
    if args.instructions and not toggle:
        if args.stdin or args.profile or args.breakdown:
            raise SystemExit("--instructions goes alone: not with --stdin, --profile or --breakdown")
        rest = list(sys.argv[1:] if argv is None else argv)
        return run_under_callgrind(rest, args.logins, args.callgrind_out)

    use_xmlsec_signer()
    tmp = tempfile.mkdtemp(prefix="broker-inproc-")
    app = make_app(args.database or f"sqlite:///{tmp}/broker.db", args.redis)
    client = app.test_client()
    idp = make_idp("https://idp.bench.example/saml")
    sp = setup(client, idp_metadata_xml(idp), args.alg)
    basic = "Basic " + base64.b64encode(f"bench-app:{SEED_SECRET}".encode()).decode()
    prof = cProfile.Profile(time.process_time) if args.profile else None
    totals = instrument(BREAKDOWN) if args.breakdown else {}
    steps: dict[str, list[float]] = {"authorize": [], "acs": [], "token": []}
    if args.profile:
        inner = app.wsgi_app

        def profiled(environ: Any, start_response: Any) -> Any:  # the app only, not the test client
            assert prof is not None
            prof.enable()
            try:
                return inner(environ, start_response)
            finally:
                prof.disable()

        app.wsgi_app = profiled
    step_now = [""]  # the step timed() is in; "" during the warm-up (not counted)
    if toggle:
        import ctypes

        library = ctypes.CDLL(toggle)
        collect, dump = library.bench_toggle_collect, library.bench_dump
        dump.argtypes = [ctypes.c_char_p]
        labels = {step: step.encode() for step in STEPS}
        wsgi = app.wsgi_app

        def counted(environ: Any, start_response: Any) -> Any:  # the app only: collection on while in it
            step = step_now[0]
            if not step:
                return wsgi(environ, start_response)
            collect()
            try:
                return wsgi(environ, start_response)
            finally:
                collect()
                dump(labels[step])

        app.wsgi_app = counted

    def timed(step: str, fn: Any) -> Any:
        t0 = time.process_time()
        out = fn()
        steps[step].append(time.process_time() - t0)
        return out

    measuring = False

    def timed_step(step: str, fn: Any) -> Any:
        step_now[0] = step if measuring else ""
        try:
            return timed(step, fn)
        finally:
            step_now[0] = ""

    def login(n: int) -> None:
        client._cookies.clear()
        verifier, challenge = _pkce()
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        query = urlencode({"client_id": "bench-app", "redirect_uri": REDIRECT_URI, "response_type": "code",
                           "scope": "openid email profile", "state": state, "nonce": nonce,
                           "code_challenge": challenge, "code_challenge_method": "S256", "connection": "idp"})
        r = timed_step("authorize", lambda: client.get(f"/t/bench/authorize?{query}"))
        assert r.status_code == 302, r.get_data(as_text=True)[:300]
        q = parse_qs(urlsplit(r.headers["Location"]).query)
        from lxml import etree

        request_id = etree.fromstring(zlib.decompress(base64.b64decode(q["SAMLRequest"][0]), -15)).get("ID")
        xml = build_response(idp, acs_url=sp["acs"], audience=sp["audience"], in_response_to=request_id,
                             name_id=f"user{n}@bench.bench.example", style=args.style)
        form = {"SAMLResponse": to_post_binding(xml), "RelayState": q["RelayState"][0]}
        r = timed_step("acs", lambda: client.post(urlsplit(sp["acs"]).path, data=form))
        assert r.status_code == 302, r.get_data(as_text=True)[:300]
        code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
        body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier}
        r = timed_step("token", lambda: client.post("/t/bench/token", data=body, headers={"Authorization": basic}))
        assert r.status_code == 200, r.get_data(as_text=True)[:300]

    for n in range(20):  # warm-up
        login(n)
    steps = {k: [] for k in steps}
    if args.stdin:
        return serve_stdin(login, steps)
    for cell in totals.values():
        cell[0] = cell[1] = 0.0
    if prof is not None:
        prof = cProfile.Profile(time.process_time)
    measuring = True
    for n in range(args.logins):
        login(20 + n)
    if toggle:  # the parent reads the counts from callgrind's output
        return 0

    total = 0.0
    for step, values in steps.items():
        mean = statistics.fmean(values) * 1000
        total += mean
        print(f"{step:<10} mean {mean:6.3f} ms  p50 {statistics.median(values) * 1000:6.3f} ms CPU")
    print(f"{'login':<10} mean {total:6.3f} ms CPU over {args.logins} logins (WSGI test client included)")
    for name, (cpu, calls, _) in totals.items():
        print(f"  {name:<62} {cpu * 1000 / args.logins:7.3f} ms/login  {calls / args.logins:5.1f} calls/login")
    if prof is not None and args.profile:
        prof.dump_stats(args.profile)
        print(f"profile written to {args.profile}")
    return 0


def serve_stdin(login: Any, steps: dict[str, list[float]]) -> int:
    """bench/compare.py's mode: for each line K read, run K logins and write one JSON line with their CPU per
    login in ms (each step and `login`), until end of input."""
    done = 20
    print("ready", flush=True)
    for line in sys.stdin:
        k = int(line)
        for values in steps.values():
            values.clear()
        for _ in range(k):
            login(done)
            done += 1
        out = {step: statistics.fmean(values) * 1000 for step, values in steps.items()}
        out["login"] = sum(out.values())
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
