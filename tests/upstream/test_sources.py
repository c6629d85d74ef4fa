"""metadata_url fetching: refresh schedule, last good copy on failure, and the requests-based Fetcher."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from broker.errors import ValidationFailed
from broker.ports import MetadataState
from broker.samlxml.errors import SamlError
from broker.upstream.sources import (
    FetchError,
    MetadataCacheEntry,
    RequestsFetcher,
    fetch_metadata_bytes,
    refresh_metadata,
)

URL = "https://idp.example.test/app/metadata"
NOW = 1_717_200_000.0  # 2024-06-01T00:00:00Z
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"


def _cert_b64() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    start = datetime.fromtimestamp(NOW, UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(days=1))
        .not_valid_after(start + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


CERT = _cert_b64()


def metadata(entity_id: str = "https://idp.example.test", attrs: str = "") -> bytes:
    return (
        f'<md:EntityDescriptor xmlns:md="{MD}" xmlns:ds="{DS}" entityID="{entity_id}"{attrs}>'
        '<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{CERT}'
        "</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        '<md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
        'Location="https://idp.example.test/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>'
    ).encode()


@pytest.fixture()
def fetcher() -> RequestsFetcher:
    return RequestsFetcher()


@pytest.fixture()
def previous() -> MetadataCacheEntry:
    return MetadataCacheEntry(
        xml=metadata(),
        fetched_at=NOW - 7 * 3600,
        next_refresh_at=NOW - 3600,
        last_error=None,
        last_attempt_at=NOW - 7 * 3600,
    )


# --- refresh_metadata -------------------------------------------------------------------------


@responses.activate
def test_first_fetch_uses_the_default_interval(fetcher: RequestsFetcher) -> None:
    body = metadata()
    responses.get(URL, body=body, content_type="application/samlmetadata+xml")
    entry = refresh_metadata(fetcher, URL, None, now=NOW)
    assert entry == MetadataCacheEntry(
        xml=body, fetched_at=NOW, next_refresh_at=NOW + 6 * 3600, last_error=None, last_attempt_at=NOW
    )
    assert not entry.due(NOW + 6 * 3600 - 1) and entry.due(NOW + 6 * 3600)
    (call,) = responses.calls
    assert call.request.req_kwargs["timeout"] == 10.0
    assert call.request.req_kwargs["stream"] is True


@responses.activate
@pytest.mark.parametrize(
    ("cache_duration", "interval"),
    [("PT2H", 7200), ("PT1M", 300), ("P7D", 86400), ("P1D", 86400), ("PT5M", 300), ("bogus", 3600)],
)
def test_cache_duration_drives_the_next_refresh_within_bounds(
    fetcher: RequestsFetcher, cache_duration: str, interval: int
) -> None:
    responses.get(URL, body=metadata(attrs=f' cacheDuration="{cache_duration}"'))
    entry = refresh_metadata(fetcher, URL, None, now=NOW, default_interval=3600)
    assert entry.next_refresh_at == NOW + interval


@responses.activate
def test_refresh_comes_before_valid_until(fetcher: RequestsFetcher) -> None:
    responses.get(URL, body=metadata(attrs=' validUntil="2024-06-01T01:00:00Z"'))
    assert refresh_metadata(fetcher, URL, None, now=NOW).next_refresh_at == NOW + 3600
    responses.replace(responses.GET, URL, body=metadata(attrs=' validUntil="2024-06-01T00:00:10Z"'))
    assert refresh_metadata(fetcher, URL, None, now=NOW).next_refresh_at == NOW + 300


@responses.activate
def test_success_replaces_the_previous_copy_and_clears_the_error(
    fetcher: RequestsFetcher, previous: MetadataCacheEntry
) -> None:
    new = metadata("https://idp.example.test/new")
    responses.get(URL, body=new)
    failed = MetadataCacheEntry(
        xml=previous.xml,
        fetched_at=previous.fetched_at,
        next_refresh_at=NOW,
        last_error="HTTP 500",
        last_attempt_at=NOW - 300,
    )
    entry = refresh_metadata(fetcher, URL, failed, now=NOW)
    assert entry.xml == new and entry.fetched_at == NOW and entry.last_error is None


@responses.activate
@pytest.mark.parametrize(
    ("mock", "reason"),
    [
        ({"status": 500, "body": b"oops"}, "HTTP 500"),
        ({"status": 404, "body": b"not found"}, "HTTP 404"),
        ({"status": 200, "body": b"<html>login page</html>"}, "not usable metadata"),
        ({"status": 200, "body": b""}, "not usable metadata"),
        ({"status": 200, "body": b'<!DOCTYPE x [<!ENTITY a "b">]><x/>'}, "not usable metadata"),
        ({"body": requests.ConnectionError("connection refused")}, "could not be fetched"),
        ({"body": requests.Timeout("read timed out")}, "could not be fetched"),
    ],
)
def test_failure_keeps_the_last_good_copy(
    fetcher: RequestsFetcher, previous: MetadataCacheEntry, mock: dict[str, object], reason: str
) -> None:
    responses.get(URL, **mock)  # type: ignore[arg-type]
    entry = refresh_metadata(fetcher, URL, previous, now=NOW)
    assert entry.xml == previous.xml
    assert entry.fetched_at == previous.fetched_at
    assert entry.last_attempt_at == NOW
    assert entry.next_refresh_at == NOW + 300
    assert entry.last_error is not None and reason in entry.last_error


@responses.activate
def test_a_stored_plain_http_url_is_not_fetched_and_keeps_the_last_good_copy(
    fetcher: RequestsFetcher, previous: MetadataCacheEntry
) -> None:
    plain = "http://idp.example.test/app/metadata"  # saved before plain http was refused
    responses.get(plain, body=metadata("https://attacker.example/"))
    entry = refresh_metadata(fetcher, plain, previous, now=NOW)
    assert len(responses.calls) == 0
    assert entry.xml == previous.xml and entry.next_refresh_at == NOW + 300
    assert entry.last_error is not None and "Plain http is refused" in entry.last_error


@responses.activate
def test_failure_without_a_previous_copy_raises(fetcher: RequestsFetcher) -> None:
    responses.get(URL, status=503)
    with pytest.raises(SamlError) as exc:
        refresh_metadata(fetcher, URL, None, now=NOW)
    assert exc.value.code == "metadata_unavailable"
    assert URL in exc.value.message and "HTTP 503" in exc.value.message


@responses.activate
def test_metadata_without_an_idp_is_not_accepted(fetcher: RequestsFetcher) -> None:
    sp_only = (
        f'<md:EntityDescriptor xmlns:md="{MD}" entityID="https://sp.example"><md:SPSSODescriptor '
        'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"/></md:EntityDescriptor>'
    ).encode()
    responses.get(URL, body=sp_only)
    with pytest.raises(SamlError) as exc:
        refresh_metadata(fetcher, URL, None, now=NOW)
    assert "IDPSSODescriptor" in exc.value.message


@responses.activate
def test_aggregate_with_entity_id(fetcher: RequestsFetcher) -> None:
    a = metadata("https://a.example").decode().replace(f' xmlns:md="{MD}" xmlns:ds="{DS}"', "")
    b = metadata("https://b.example").decode().replace(f' xmlns:md="{MD}" xmlns:ds="{DS}"', "")
    agg = f'<md:EntitiesDescriptor xmlns:md="{MD}" xmlns:ds="{DS}">{a}{b}</md:EntitiesDescriptor>'.encode()
    responses.get(URL, body=agg)
    with pytest.raises(SamlError):
        refresh_metadata(fetcher, URL, None, now=NOW)
    assert refresh_metadata(fetcher, URL, None, now=NOW, entity_id="https://b.example").xml == agg


@responses.activate
def test_oversized_metadata_is_refused(fetcher: RequestsFetcher, previous: MetadataCacheEntry) -> None:
    responses.get(URL, body=metadata() + b"<!--" + b"x" * 4096 + b"-->")
    entry = refresh_metadata(fetcher, URL, previous, now=NOW, max_bytes=2048)
    assert entry.xml == previous.xml and entry.last_error is not None and "too large" in entry.last_error


def test_cache_entry_round_trips_through_metadata_state(previous: MetadataCacheEntry) -> None:
    state = previous.to_state()
    assert state == MetadataState(
        xml=previous.xml,
        fetched_at=previous.fetched_at,
        next_refresh_at=previous.next_refresh_at,
        last_error=None,
    )
    back = MetadataCacheEntry.from_state(state)
    assert back is not None and back.xml == previous.xml and back.next_refresh_at == previous.next_refresh_at
    assert MetadataCacheEntry.from_state(MetadataState(None, None, None, "HTTP 500")) is None


# --- RequestsFetcher --------------------------------------------------------------------------


@responses.activate
def test_get_returns_status_body_and_headers(fetcher: RequestsFetcher) -> None:
    responses.get(URL, body=b"hello", status=201, content_type="text/plain", headers={"X-Thing": "1"})
    result = fetcher.get(URL, timeout=3.0, max_bytes=100)
    assert (result.status, result.body, result.content_type) == (201, b"hello", "text/plain")
    assert result.headers["x-thing"] == "1"
    assert responses.calls[0].request.req_kwargs["timeout"] == 3.0
    assert responses.calls[0].request.headers["User-Agent"] == "federation-broker"


@responses.activate
def test_get_enforces_the_size_cap(fetcher: RequestsFetcher) -> None:
    responses.get(URL, body=b"x" * 1001)
    with pytest.raises(FetchError, match="too large"):
        fetcher.get(URL, timeout=3.0, max_bytes=1000)
    responses.replace(responses.GET, URL, body=b"x" * 1000)
    assert len(fetcher.get(URL, timeout=3.0, max_bytes=1000).body) == 1000


@responses.activate
def test_get_refuses_a_declared_oversized_body(fetcher: RequestsFetcher) -> None:
    responses.get(URL, body=b"x", headers={"Content-Length": "99999999"}, auto_calculate_content_length=False)
    with pytest.raises(FetchError, match="too large"):
        fetcher.get(URL, timeout=3.0, max_bytes=1000)


@responses.activate
def test_a_content_length_of_other_digits_is_not_a_crash(fetcher: RequestsFetcher) -> None:
    """Header bytes are latin-1 characters: 0xB2 is "²", which str.isdigit() accepts and int() refuses. Such
    a Content-Length is ignored; the body is read (and measured) as it comes."""
    responses.get(URL, body=b"<ok/>", headers={"Content-Length": "\u00b2"}, auto_calculate_content_length=False)
    assert fetcher.get(URL, timeout=3.0, max_bytes=100).body == b"<ok/>"


@responses.activate
def test_get_follows_http_redirects(fetcher: RequestsFetcher) -> None:
    responses.get(URL, status=302, headers={"Location": "/moved"})
    responses.get(
        "https://idp.example.test/moved", status=301, headers={"Location": "https://mirror.example/md"}
    )
    responses.get("https://mirror.example/md", body=b"<ok/>")
    assert fetcher.get(URL, timeout=3.0, max_bytes=100).body == b"<ok/>"


@responses.activate
def test_get_sends_headers_and_keeps_a_bearer_token_to_its_own_origin(fetcher: RequestsFetcher) -> None:
    """Headers go with every hop; Authorization only while the scheme, host and port stay the same."""
    responses.get(URL, status=302, headers={"Location": "/moved"})
    responses.get("https://idp.example.test/moved", status=302, headers={"Location": "https://IDP.example.test:8443/"})
    responses.get("https://idp.example.test:8443/", status=302, headers={"Location": "https://other.example/ui"})
    responses.get("https://other.example/ui", json={"sub": "x"})
    sent = {"Authorization": "Bearer at-1", "Accept": "application/json"}
    assert fetcher.get(URL, timeout=3.0, max_bytes=100, headers=sent).status == 200
    seen = [(c.request.url, c.request.headers.get("Authorization"), c.request.headers.get("Accept"))
            for c in responses.calls]
    assert seen[0] == (URL, "Bearer at-1", "application/json")
    assert seen[1] == ("https://idp.example.test/moved", "Bearer at-1", "application/json")
    assert all(auth is None and accept == "application/json" for _, auth, accept in seen[2:])
    assert sent == {"Authorization": "Bearer at-1", "Accept": "application/json"}, "the caller's dict is untouched"


@responses.activate
@pytest.mark.parametrize("url", ["http://idp.example.test/md", "http://203.0.113.7/md", "http://[2001:db8::1]/md"])
def test_get_refuses_plain_http_to_a_non_loopback_host(fetcher: RequestsFetcher, url: str) -> None:
    with pytest.raises(FetchError, match="Plain http is refused"):
        fetcher.get(url, timeout=3.0, max_bytes=100)
    assert len(responses.calls) == 0, "refused before any byte is sent"


@responses.activate
def test_get_refuses_a_redirect_down_to_plain_http(fetcher: RequestsFetcher) -> None:
    responses.get(URL, status=302, headers={"Location": "http://mirror.example/md"})
    responses.get("http://mirror.example/md", body=b"<evil/>")
    with pytest.raises(FetchError, match="Plain http is refused"):
        fetcher.get(URL, timeout=3.0, max_bytes=100)
    assert [c.request.url for c in responses.calls] == [URL]


@responses.activate
@pytest.mark.parametrize("url", ["http://127.0.0.1:9/md", "http://localhost:9/md", "http://[::1]:9/md"])
def test_get_allows_plain_http_to_a_loopback_host(fetcher: RequestsFetcher, url: str) -> None:
    responses.get(url, body=b"<ok/>")
    assert fetcher.get(url, timeout=3.0, max_bytes=100).body == b"<ok/>"


@responses.activate
def test_post_form_refuses_plain_http_to_a_non_loopback_host(fetcher: RequestsFetcher) -> None:
    with pytest.raises(FetchError, match="Plain http is refused"):
        fetcher.post_form("http://op.example.test/token", {"a": "b"}, timeout=3.0, max_bytes=100)
    assert len(responses.calls) == 0


@responses.activate
@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://idp.example/md", "gopher://x/"])
def test_get_refuses_redirects_to_other_schemes(fetcher: RequestsFetcher, target: str) -> None:
    responses.get(URL, status=302, headers={"Location": target})
    with pytest.raises(FetchError, match="http"):
        fetcher.get(URL, timeout=3.0, max_bytes=100)


@responses.activate
def test_get_gives_up_after_too_many_redirects() -> None:
    responses.get(URL, status=302, headers={"Location": URL})
    with pytest.raises(FetchError, match="redirects"):
        RequestsFetcher(max_redirects=3).get(URL, timeout=3.0, max_bytes=100)
    assert len(responses.calls) == 4


@pytest.mark.parametrize("url", ["file:///etc/passwd", "idp.example/metadata", "ftp://idp.example/md"])
def test_get_refuses_non_http_urls(fetcher: RequestsFetcher, url: str) -> None:
    with pytest.raises(FetchError):
        fetcher.get(url, timeout=3.0, max_bytes=100)


@responses.activate
def test_network_errors_become_fetch_errors(fetcher: RequestsFetcher) -> None:
    responses.get(URL, body=requests.ConnectionError("boom"))
    with pytest.raises(FetchError) as exc:
        fetcher.get(URL, timeout=3.0, max_bytes=100)
    assert exc.value.code == "upstream_unavailable" and exc.value.status == 503
    assert "boom" not in exc.value.message and "boom" in (exc.value.detail or "")


@responses.activate
def test_post_form(fetcher: RequestsFetcher) -> None:
    responses.post(URL, json={"ok": True}, status=302, headers={"Location": "https://elsewhere.example/"})
    result = fetcher.post_form(
        URL,
        {"grant_type": "authorization_code", "code": "a b"},
        timeout=4.0,
        max_bytes=100,
        headers={"Authorization": "Basic eDp5"},
    )
    assert result.status == 302  # POSTs never follow redirects
    (call,) = responses.calls
    assert call.request.body == "grant_type=authorization_code&code=a+b"
    assert call.request.headers["Authorization"] == "Basic eDp5"
    assert call.request.req_kwargs["timeout"] == 4.0


# --- fetch_metadata_bytes (admin save-time fetch) ---------------------------------------------


@responses.activate
def test_fetch_metadata_bytes(fetcher: RequestsFetcher) -> None:
    responses.get(URL, body=metadata())
    assert fetch_metadata_bytes(fetcher, URL, timeout=2.0, max_bytes=100_000) == metadata()
    assert responses.calls[0].request.req_kwargs["timeout"] == 2.0


@responses.activate
@pytest.mark.parametrize(
    ("mock", "reason"),
    [
        ({"status": 404}, "HTTP 404"),
        ({"body": requests.ConnectionError("refused")}, "could not be fetched"),
        ({"body": b"x" * 200}, "too large"),
    ],
)
def test_fetch_metadata_bytes_failures(
    fetcher: RequestsFetcher, mock: dict[str, object], reason: str
) -> None:
    responses.get(URL, **mock)  # type: ignore[arg-type]
    with pytest.raises(ValidationFailed) as exc:
        fetch_metadata_bytes(fetcher, URL, timeout=2.0, max_bytes=100)
    assert exc.value.code == "metadata_unavailable"
    assert exc.value.details == {"field": "saml.metadata_url"}
    assert reason in exc.value.message and URL in exc.value.message


# --- the whole exchange is bounded, not each read -----------------------------------------------------------


class _Drip:
    """A loopback HTTP server that answers one byte at a time, `gap` seconds apart: each read gets a byte well
    within any per-read timeout, so only a deadline on the whole exchange stops it."""

    def __init__(self, phase: str, gap: float = 0.2) -> None:
        import socket
        import threading

        self.phase, self.gap = phase, gap
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/doc"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        body = b'{"issuer": "https://op.test"}' * 40
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        try:
            conn.recv(65536)
            if self.phase == "headers":
                for i in range(len(head)):
                    if self.stop.is_set():
                        return
                    conn.sendall(head[i:i + 1])
                    time.sleep(self.gap)
            else:
                conn.sendall(head)
            for i in range(len(body)):
                if self.stop.is_set():
                    return
                conn.sendall(body[i:i + 1])
                time.sleep(self.gap)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.server.close()


@pytest.mark.parametrize("phase", ["headers", "body"])
@pytest.mark.parametrize("method", ["get", "post_form"])
def test_an_upstream_that_drips_its_answer_is_cut_off_at_the_timeout(phase: str, method: str) -> None:
    drip = _Drip(phase)
    try:
        fetcher = RequestsFetcher()
        started = time.monotonic()
        with pytest.raises(FetchError) as exc:
            if method == "get":
                fetcher.get(drip.url, timeout=1.0, max_bytes=1 << 20)
            else:
                fetcher.post_form(drip.url, {"a": "b"}, timeout=1.0, max_bytes=1 << 20)
        elapsed = time.monotonic() - started
        assert "too slow" in exc.value.message
        assert elapsed < 4.0, f"held for {elapsed:.1f}s: the per-read timeout never tripped, nor the deadline"
    finally:
        drip.close()


def test_a_quick_answer_is_not_cut_short_by_the_deadline() -> None:
    drip = _Drip("body", gap=0.0)
    try:
        result = RequestsFetcher().get(drip.url, timeout=5.0, max_bytes=1 << 20)
        assert result.status == 200 and result.body == b'{"issuer": "https://op.test"}' * 40
    finally:
        drip.close()


def test_a_fetch_error_never_repeats_the_credentials_of_a_url() -> None:
    from tests.support.broker_server import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(FetchError) as err:
        RequestsFetcher().get(f"http://admin:s3cret@127.0.0.1:{port}/md", timeout=2.0, max_bytes=100)
    assert f"127.0.0.1:{port}" in err.value.message and "s3cret" not in err.value.message
    assert "admin" not in err.value.message
