"""A request body the client got wrong (a malformed chunk size, a chunk without its terminator), read by the real
gunicorn: one 400 on every surface, then the connection closed, no 5xx and no traceback in the log; at the ACS it is a
refused login with its audit event."""

from __future__ import annotations

import socket

import pytest
import requests

from tests.support.broker_server import BOOTSTRAP_KEY, BrokerServer, running_broker

BAD_CHUNKS = {
    "size": b"ZZZ\r\nabc\r\n0\r\n\r\n",
    "terminator": b"3\r\nabcXX0\r\n\r\n",
}


def _post_chunked(port: int, path: str, body: bytes) -> bytes:
    auth = f"Authorization: Bearer {BOOTSTRAP_KEY}\r\n" if path.startswith("/admin/") else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n{auth}"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            data += chunk
    return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> BrokerServer:
    with running_broker(tmp_path_factory.mktemp("malformed")) as srv:
        assert srv.api("POST", "/tenants", {"slug": "acme", "name": "Acme"}).status_code == 201
        assert srv.api("POST", "/tenants/acme/connections", {
            "slug": "okta", "protocol": "saml", "domains": ["acme.test"], "mapping": {"preset": "okta"},
        }).status_code == 201
        yield srv


@pytest.mark.parametrize("kind", sorted(BAD_CHUNKS))
@pytest.mark.parametrize("path, surface", [
    ("/t/acme/token", "oauth"), ("/t/acme/revoke", "oauth"), ("/t/acme/introspect", "oauth"),
    ("/admin/v1/tenants", "admin"), ("/t/acme/connections/okta/saml/acs", "html"),
])
def test_a_malformed_chunked_body_is_a_400(server: BrokerServer, path: str, surface: str, kind: str) -> None:
    answer = _post_chunked(server.port, path, BAD_CHUNKS[kind])  # returns once the server has closed
    assert _status(answer) == 400, answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, "the rest of the body is not taken for a next request"
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    if surface == "oauth":
        assert b'"error":"invalid_request"' in answer.replace(b" ", b"")
    elif surface == "admin":
        assert b'"error":"invalid_request"' in answer.replace(b" ", b"")
    else:
        assert b"text/html" in head


def test_the_acs_audits_it_as_a_refused_login_and_nothing_is_a_500(server: BrokerServer) -> None:
    before = server.api("GET", "/tenants/acme/audit?type=login").json()["events"]
    assert _status(_post_chunked(server.port, "/t/acme/connections/okta/saml/acs", BAD_CHUNKS["size"])) == 400
    events = server.api("GET", "/tenants/acme/audit?type=login").json()["events"]
    assert len(events) == len(before) + 1
    assert events[0]["outcome"] == "failure" and events[0]["reason"] == "saml_response_malformed"
    assert events[0]["connection"] == "okta"
    log = server.log()
    assert "unhandled_error" not in log and "Traceback" not in log
    assert "request_body_unreadable" in log
    assert server.api("GET", "/tenants/acme").status_code == 200, "the server goes on answering"


def test_an_authorize_url_with_a_long_id_token_hint_reaches_the_broker(server: BrokerServer) -> None:
    """An ID token with many groups makes an id_token_hint of several KB: gunicorn's default request line limit
    (4094) would answer 414 before the broker sees it; up to 8190 the broker answers (here: an unknown client)."""
    r = requests.get(f"{server.url}/t/acme/authorize", params={"client_id": "nope", "id_token_hint": "x" * 7000},
                     timeout=10)
    assert r.status_code == 400 and "Unknown client" in r.text
    r = requests.get(f"{server.url}/t/acme/authorize", params={"client_id": "nope", "id_token_hint": "x" * 9000},
                     timeout=10)
    assert r.status_code == 414
