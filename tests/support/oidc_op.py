"""A real, independent OpenID Provider for end-to-end tests: panva/oidc-provider (OpenID Certified) on node.

API (for connector tests and for end-to-end tests through the broker's HTTP endpoints):

    from tests.support.oidc_op import OpClient, OpAccount, running_oidc_op, oidc_op_factory, oidc_op

    oidc_op_factory(clients=[OpClient(...)], accounts=[...]) -> OidcOp   # fixture: a callable; every OP it
                                                                         # started is stopped at teardown
    oidc_op                                  # fixture: one OP, DEFAULT_CLIENT (client_secret_basic, redirect
                                             # DEFAULT_REDIRECT_URI) and DEFAULT_ACCOUNT
    with running_oidc_op(clients, accounts) as op: ...   # same, for any fixture scope

    op.issuer          "http://127.0.0.1:<free port>" (no trailing slash; discovery at /.well-known/...)
    op.client_id, op.client_secret          the first client's
    op.clients[client_id] -> OpClient
    op.login(session, authorize_url, username="alice", password="wonderland", abort=False) -> str
        Plays the browser at the OP with a requests.Session: follows redirects from `authorize_url` (an OP
        URL, or any URL that redirects to the OP), submits the login and consent forms, and returns the
        first URL outside the OP (normally `<redirect_uri>?code=...&state=...&iss=...`) WITHOUT requesting
        it. abort=True clicks "Cancel" (-> error=access_denied).
    make_fetcher() -> broker.ports.Fetcher  (broker.upstream.sources.RequestsFetcher when present)

The OP: PKCE required (S256), RFC 9207 `iss` in responses, claims by scope (openid: sub; email: email,
email_verified; profile: name, given_name, family_name, ...; groups: groups), ID tokens from the code flow
carry only sub/auth_time/acr/amr (so the profile comes from userinfo), `amr=["pwd"]`, `acr="urn:test:loa:1"`.

Node dependencies: `npm ci --no-audit --no-fund --prefix tests/support/oidc_op` (package-lock.json pins
oidc-provider 8.8.1, which supports Node 20). `ensure_node_modules()` runs it when node_modules is missing;
tests skip (with the reason) only when node or npm are not installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from broker.ports import Fetcher, FetchResult

OP_DIR = Path(__file__).resolve().parent / "oidc_op"
SERVER = OP_DIR / "server.mjs"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8000/t/acme/connections/corp-oidc/oidc/callback"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class OpAccount:
    login: str
    password: str
    claims: Mapping[str, Any]


@dataclass(frozen=True)
class OpClient:
    """One registered client of the OP (oidc-provider client metadata)."""

    client_id: str
    redirect_uris: tuple[str, ...]
    client_secret: str | None = None
    token_endpoint_auth_method: str = "client_secret_basic"
    jwks: Mapping[str, Any] | None = None  # public JWK Set, for private_key_jwt
    id_token_signed_response_alg: str = "RS256"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "client_id": self.client_id,
            "redirect_uris": list(self.redirect_uris),
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "id_token_signed_response_alg": self.id_token_signed_response_alg,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            **self.extra,
        }
        if self.client_secret is not None:
            meta["client_secret"] = self.client_secret
        if self.jwks is not None:
            meta["jwks"] = dict(self.jwks)
        return meta


DEFAULT_ACCOUNT = OpAccount(
    login="alice",
    password="wonderland",
    claims={
        "email": "alice@example.com",
        "email_verified": True,
        "name": "Alice Liddell",
        "given_name": "Alice",
        "family_name": "Liddell",
        "groups": ["engineering", "admins"],
    },
)
# A secret with characters that RFC 6749 §2.3.1 form-urlencoding changes: a client that skips the
# encoding (or decodes without it) fails against this OP.
DEFAULT_CLIENT = OpClient(
    client_id="broker:client",
    client_secret="s3cr+t/with:odd&chars= %",
    redirect_uris=(DEFAULT_REDIRECT_URI,),
)


class OidcOp:
    """A running oidc-provider process. See the module docstring for the API."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        issuer: str,
        port: int,
        clients: Sequence[OpClient],
        accounts: Sequence[OpAccount],
        log_path: Path,
    ) -> None:
        self.process = process
        self.issuer = issuer
        self.port = port
        self.clients = {c.client_id: c for c in clients}
        self.accounts = {a.login: a for a in accounts}
        self.log_path = log_path
        self._first = clients[0] if clients else None

    @property
    def client_id(self) -> str:
        assert self._first is not None
        return self._first.client_id

    @property
    def client_secret(self) -> str | None:
        assert self._first is not None
        return self._first.client_secret

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def login(
        self,
        session: requests.Session,
        authorize_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        abort: bool = False,
        max_steps: int = 20,
    ) -> str:
        """Drive the OP's login and consent pages; return the first URL outside the OP (not requested)."""
        if username is None:
            username = next(iter(self.accounts)) if self.accounts else "alice"
        if password is None:
            password = self.accounts[username].password if username in self.accounts else ""
        url = authorize_url
        method, data = "GET", None
        reached_op = self._is_op_url(url)
        tried_login = False
        for _ in range(max_steps):
            response = session.request(method, url, data=data, allow_redirects=False, timeout=10)
            method, data = "GET", None
            if response.is_redirect:
                url = urljoin(url, response.headers["Location"])
                if self._is_op_url(url):
                    reached_op = True
                elif reached_op:
                    return url
                continue
            page = response.text
            if response.status_code != 200 or 'id="error"' in page:
                raise AssertionError(f"the OP answered {response.status_code} at {url}: {page[:2000]}")
            form = self._form(page, "login") or self._form(page, "consent")
            if form is None:
                raise AssertionError(f"unexpected page from the OP at {url}: {page[:2000]}")
            form_id, action = form
            if abort:
                url = urljoin(url, action.rsplit("/", 1)[0] + "/abort")
                continue
            if form_id == "login":
                if tried_login:
                    raise AssertionError(f"the OP refused the login of {username!r}")
                tried_login = True
                data = {"login": username, "password": password}
            else:
                data = {}
            method, url = "POST", urljoin(url, action)
        raise AssertionError(f"no redirect out of the OP after {max_steps} steps (last URL {url})")

    def _is_op_url(self, url: str) -> bool:
        return url == self.issuer or url.startswith(self.issuer + "/")

    @staticmethod
    def _form(page: str, form_id: str) -> tuple[str, str] | None:
        m = re.search(rf'<form id="{form_id}"[^>]*action="([^"]+)"', page)
        return (form_id, html.unescape(m.group(1))) if m else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def node_missing_reason() -> str | None:
    """Why the OP cannot run here (node/npm not installed), or None."""
    if shutil.which("node") is None:
        return "node is not installed: the end-to-end OIDC tests need node (>= 18) and npm"
    if not (OP_DIR / "node_modules" / "oidc-provider").is_dir() and shutil.which("npm") is None:
        return "npm is not installed and tests/support/oidc_op/node_modules is missing"
    return None


def ensure_node_modules() -> None:
    """Install the OP's pinned node dependencies once (`npm ci`), safely under concurrent test workers."""
    if (OP_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return
    lock_path = Path(tempfile.gettempdir()) / "broker-oidc-op-npm.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (OP_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
            return
        command = ["npm", "ci", "--no-audit", "--no-fund"]
        if not (OP_DIR / "package-lock.json").is_file():
            command[1] = "install"
        done = subprocess.run(command, cwd=OP_DIR, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed in {OP_DIR}:\n{done.stdout}\n{done.stderr}")


@contextlib.contextmanager
def running_oidc_op(
    clients: Sequence[OpClient] = (DEFAULT_CLIENT,),
    accounts: Sequence[OpAccount] = (DEFAULT_ACCOUNT,),
) -> Iterator[OidcOp]:
    """Start oidc-provider on 127.0.0.1 (an ephemeral port), wait until discovery answers, stop it after."""
    reason = node_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    ensure_node_modules()
    config = {
        "clients": [c.metadata() for c in clients],
        "accounts": {a.login: {"password": a.password, "claims": dict(a.claims)} for a in accounts},
    }
    workdir = Path(tempfile.mkdtemp(prefix="oidc-op-"))
    out_path, log_path = workdir / "stdout", workdir / "stderr"
    env = {**os.environ, "OIDC_OP_CONFIG": json.dumps(config), "NODE_ENV": "test"}
    with open(out_path, "wb") as out, open(log_path, "wb") as err:
        process = subprocess.Popen(["node", str(SERVER)], cwd=OP_DIR, stdout=out, stderr=err, env=env)
    op: OidcOp | None = None
    try:
        ready = _wait_ready(process, out_path, log_path)
        op = OidcOp(process, ready["issuer"], ready["port"], clients, accounts, log_path)
        yield op
    finally:
        if op is not None:
            op.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(process: subprocess.Popen[bytes], out_path: Path, log_path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the OIDC OP exited with {process.returncode}:\n{log_path.read_text()}")
        line = out_path.read_text().split("\n", 1)[0]
        if line.startswith("{") and out_path.read_text().count("\n") >= 1:
            ready: dict[str, Any] = json.loads(line)
            response = requests.get(ready["issuer"] + "/.well-known/openid-configuration", timeout=5)
            if response.status_code == 200:
                return ready
        time.sleep(0.05)
    raise RuntimeError(f"the OIDC OP did not start within {START_TIMEOUT}s:\n{log_path.read_text()}")


@pytest.fixture
def oidc_op_factory() -> Iterator[Callable[..., OidcOp]]:
    """A callable (clients=..., accounts=...) -> OidcOp; every OP it started is stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(
            clients: Sequence[OpClient] = (DEFAULT_CLIENT,),
            accounts: Sequence[OpAccount] = (DEFAULT_ACCOUNT,),
        ) -> OidcOp:
            return stack.enter_context(running_oidc_op(clients, accounts))

        yield start


@pytest.fixture
def oidc_op(oidc_op_factory: Callable[..., OidcOp]) -> OidcOp:
    """One running OP with DEFAULT_CLIENT and DEFAULT_ACCOUNT."""
    return oidc_op_factory()


class _MiniFetcher:
    """A minimal broker.ports.Fetcher over requests, used only if the broker's RequestsFetcher is absent."""

    def get(
        self, url: str, *, timeout: float, max_bytes: int, headers: dict[str, str] | None = None,
    ) -> FetchResult:
        return self._result(requests.get(url, headers=headers, timeout=timeout, allow_redirects=False), max_bytes)

    def post_form(
        self,
        url: str,
        data: dict[str, str],
        *,
        timeout: float,
        max_bytes: int,
        headers: dict[str, str] | None = None,
    ) -> FetchResult:
        response = requests.post(url, data=data, headers=headers, timeout=timeout, allow_redirects=False)
        return self._result(response, max_bytes)

    @staticmethod
    def _result(response: requests.Response, max_bytes: int) -> FetchResult:
        body = response.content
        if len(body) > max_bytes:
            raise requests.RequestException(f"body over {max_bytes} bytes")
        return FetchResult(
            status=response.status_code,
            body=body,
            content_type=response.headers.get("Content-Type"),
            headers={k.lower(): v for k, v in response.headers.items()},
        )


def make_fetcher() -> Fetcher:
    """The broker's production fetcher when it exists, else a minimal one with the same contract."""
    try:
        from broker.upstream.sources import RequestsFetcher
    except ImportError:
        return _MiniFetcher()
    return RequestsFetcher()
