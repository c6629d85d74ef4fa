"""Fetching upstream documents: IdP metadata from a metadata_url (refresh schedule, last good copy kept).

`RequestsFetcher` is the production broker.ports.Fetcher: every call has a timeout and a size cap, and
redirects are followed only to http(s) URLs. `refresh_metadata` is pure apart from the fetcher it is given:
it decides what to keep and when to try again, and the caller stores the returned entry.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import LocationParseError, NewConnectionError

from broker.errors import ServiceUnavailable, ValidationFailed
from broker.ports import Fetcher, FetchResult, MetadataState
from broker.samlxml.errors import SamlError
from broker.samlxml.metadata import parse_idp_metadata

DEFAULT_TIMEOUT = 10.0
METADATA_MAX_BYTES = 2 * 1024 * 1024
DEFAULT_REFRESH_INTERVAL = 6 * 3600
MIN_REFRESH_INTERVAL = 5 * 60
MAX_REFRESH_INTERVAL = 24 * 3600
RETRY_AFTER_FAILURE = 5 * 60
MAX_REDIRECTS = 5


class FetchError(ServiceUnavailable):
    """An outbound HTTP call failed: unreachable, timed out, too large, or a refused redirect."""

    default_code = "upstream_unavailable"


# --- metadata refresh -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetadataCacheEntry:
    """The last good metadata document of a metadata_url, and the state of its refresh schedule."""

    xml: bytes
    fetched_at: float
    next_refresh_at: float
    last_error: str | None
    last_attempt_at: float

    def due(self, now: float) -> bool:
        return now >= self.next_refresh_at

    def to_state(self) -> MetadataState:
        """As broker.ports.MetadataState, for ConfigStore.save_metadata_state."""
        return MetadataState(
            xml=self.xml, fetched_at=self.fetched_at, next_refresh_at=self.next_refresh_at,
            last_error=self.last_error,
        )

    @classmethod
    def from_state(cls, state: MetadataState) -> MetadataCacheEntry | None:
        """From broker.ports.MetadataState; None when no good copy was ever fetched."""
        if state.xml is None or state.fetched_at is None:
            return None
        next_at = state.next_refresh_at if state.next_refresh_at is not None else state.fetched_at
        return cls(
            xml=state.xml, fetched_at=state.fetched_at, next_refresh_at=next_at,
            last_error=state.last_error, last_attempt_at=max(state.fetched_at, next_at - RETRY_AFTER_FAILURE),
        )


def refresh_metadata(
    fetcher: Fetcher,
    url: str,
    previous: MetadataCacheEntry | None,
    *,
    now: float,
    default_interval: int = DEFAULT_REFRESH_INTERVAL,
    entity_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = METADATA_MAX_BYTES,
) -> MetadataCacheEntry:
    """Fetch `url` and check that it is usable IdP metadata.

    Success: the new document, next refresh after its cacheDuration (bounded to 5 min .. 24 h) or
    `default_interval`, and never after its validUntil. Failure (unreachable, non-200, not usable metadata):
    the previous document is kept with `last_error` set and a retry in 5 minutes; with no previous
    document, SamlError("metadata_unavailable").
    """
    try:
        result = fetcher.get(url, timeout=timeout, max_bytes=max_bytes)
        if result.status != 200:
            raise _Failure(f"the metadata URL answered HTTP {result.status}")
        meta = parse_idp_metadata(result.body, entity_id=entity_id, now=_dt(now), max_bytes=max_bytes)
    except _Failure as e:
        return _failed(previous, url, now, e.reason)
    except SamlError as e:
        return _failed(previous, url, now, f"the document is not usable metadata: {e.message}")
    except (ServiceUnavailable, OSError) as e:
        return _failed(previous, url, now, f"the metadata URL could not be fetched: {_reason(e)}")

    interval = float(meta.cache_duration_seconds or default_interval)
    interval = min(max(interval, MIN_REFRESH_INTERVAL), MAX_REFRESH_INTERVAL)
    next_at = now + interval
    if meta.valid_until is not None:
        next_at = min(next_at, max(now + MIN_REFRESH_INTERVAL, meta.valid_until.timestamp()))
    return MetadataCacheEntry(
        xml=result.body, fetched_at=now, next_refresh_at=next_at, last_error=None, last_attempt_at=now
    )


def fetch_metadata_bytes(
    fetcher: Fetcher, url: str, *, timeout: float = DEFAULT_TIMEOUT, max_bytes: int = METADATA_MAX_BYTES
) -> bytes:
    """One fetch of a metadata_url when an admin saves it: the body of a 200 answer (not parsed here).

    Raises ValidationFailed(code="metadata_unavailable", details={"field": "saml.metadata_url"}).
    """
    try:
        result = fetcher.get(url, timeout=timeout, max_bytes=max_bytes)
    except (ServiceUnavailable, OSError) as e:
        detail = e.detail if isinstance(e, ServiceUnavailable) else repr(e)
        raise _unavailable(url, f"it could not be fetched ({_reason(e)})", detail=detail) from e
    if result.status != 200:
        raise _unavailable(url, f"it answered HTTP {result.status}")
    return result.body


def _unavailable(url: str, reason: str, detail: str | None = None) -> ValidationFailed:
    return ValidationFailed(
        f"The IdP metadata URL {url} cannot be used: {reason}.",
        code="metadata_unavailable",
        detail=detail,
        details={"field": "saml.metadata_url"},
    )


class _Failure(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _failed(previous: MetadataCacheEntry | None, url: str, now: float, reason: str) -> MetadataCacheEntry:
    if previous is None:
        raise SamlError(
            "metadata_unavailable",
            f"The IdP metadata could not be loaded from {url}: {reason}.",
            reason,
        )
    return MetadataCacheEntry(
        xml=previous.xml,
        fetched_at=previous.fetched_at,
        next_refresh_at=now + RETRY_AFTER_FAILURE,
        last_error=reason,
        last_attempt_at=now,
    )


def _reason(e: Exception) -> str:
    if isinstance(e, ServiceUnavailable):
        return e.message.rstrip(".")
    return type(e).__name__


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


# --- HTTP -------------------------------------------------------------------------------------


def is_public_address(ip: str) -> bool:
    """False for loopback, private (RFC 1918/4193), link-local (cloud metadata endpoints), multicast,
    reserved and unspecified addresses, including IPv4-mapped IPv6 forms of them."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified)


def _check_peer(conn: HTTPConnection) -> None:
    sock = conn.sock
    peer = sock.getpeername()[0] if sock is not None else ""
    if not is_public_address(str(peer)):
        conn.close()
        raise NewConnectionError(conn, f"refused: {peer} is not a public address (egress policy)")


# --- a whole-exchange deadline ---------------------------------------------------------------------------
#
# requests' timeout bounds each socket read, not the exchange: an upstream that sends its status line, headers
# or body one byte a second never trips it, and would hold a worker thread for as long as it likes. Every
# connection the fetcher uses registers its socket with the calling thread's deadline; when the deadline
# passes, a timer shuts those sockets down, the blocked read returns, and the fetch fails as "too slow".

_deadlines = threading.local()


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self.expired:
                _shutdown(sock)
            else:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def __enter__(self) -> _Deadline:
        _deadlines.current = self
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()
        _deadlines.current = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _watch(conn: HTTPConnection) -> None:
    deadline: _Deadline | None = getattr(_deadlines, "current", None)
    if deadline is not None:
        deadline.watch(conn.sock)


class _WatchedHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:  # the request is sent: the socket exists; its answer may be slow
        _watch(self)
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:
        _watch(self)
        return super().getresponse()


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class WatchedAdapter(HTTPAdapter):
    """Connections whose sockets the calling thread's deadline can shut down."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _PublicHTTPConnection(_WatchedHTTPConnection):
    def connect(self) -> None:
        super().connect()
        _check_peer(self)


class _PublicHTTPSConnection(_WatchedHTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _check_peer(self)


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class PublicOnlyAdapter(HTTPAdapter):
    """Connects only to public addresses. The check runs on the connected socket's peer, after DNS, so a
    name that resolves (or re-resolves) to an internal address is refused too (SSRF / DNS rebinding)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


class RequestsFetcher:
    """broker.ports.Fetcher over `requests`: timeouts, a streamed size cap, redirects only to http(s), and
    (unless `allow_private`) connections only to public addresses: tenant admins choose these URLs."""

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        user_agent: str = "federation-broker",
        max_redirects: int = MAX_REDIRECTS,
        allow_private: bool = True,
    ) -> None:
        self._session = session or requests.Session()
        adapter: HTTPAdapter | None = None if session is not None else WatchedAdapter()
        if not allow_private:
            self._session.trust_env = False  # an environment proxy would hide the real peer
            adapter = PublicOnlyAdapter()
        if adapter is not None:
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
        self._user_agent = user_agent
        self._max_redirects = max_redirects

    def get(
        self, url: str, *, timeout: float, max_bytes: int, headers: dict[str, str] | None = None,
    ) -> FetchResult:
        sent = dict(headers or {})
        with _bounded(timeout):
            for _ in range(self._max_redirects + 1):
                _check_url(url)
                response = self._send("GET", url, timeout=timeout, headers=dict(sent))
                if response.is_redirect:
                    location = response.headers.get("Location", "")
                    response.close()
                    target = urljoin(url, location)
                    if _origin(target) != _origin(url):  # a bearer token is for the server it was meant for
                        sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                    url = target
                    continue
                return _read(response, timeout=timeout, max_bytes=max_bytes)
        raise FetchError("Too many redirects.", detail=f"more than {self._max_redirects} redirects")

    def post_form(
        self, url: str, data: dict[str, str], *, timeout: float, max_bytes: int,
        headers: dict[str, str] | None = None,
    ) -> FetchResult:
        _check_url(url)
        with _bounded(timeout):
            response = self._send("POST", url, timeout=timeout, headers=dict(headers or {}), data=data)
            return _read(response, timeout=timeout, max_bytes=max_bytes)

    def _send(
        self, method: str, url: str, *, timeout: float, headers: dict[str, str],
        data: dict[str, str] | None = None,
    ) -> requests.Response:
        headers.setdefault("User-Agent", self._user_agent)
        try:
            return self._session.request(
                method, url, data=data, headers=headers, timeout=timeout, stream=True, allow_redirects=False
            )
        except requests.RequestException as e:
            raise FetchError(
                f"The upstream server at {_netloc(url)} could not be reached.",
                detail=f"{type(e).__name__}: {e}",
            ) from e
        except (LocationParseError, ValueError) as e:  # a host urllib3 cannot use: an empty or over-long label
            raise FetchError(f"The URL of the upstream server ({_netloc(url)}) is not valid.",
                             detail=f"{type(e).__name__}: {e}") from e


@contextmanager
def _bounded(timeout: float) -> Iterator[None]:
    """The whole exchange (redirects, status line, headers, body) within `timeout` plus a second's grace: past
    it, the sockets are shut down and whatever was blocked fails as "too slow"."""
    with _Deadline(timeout + 1.0) as deadline:
        try:
            yield
        except (FetchError, requests.RequestException, OSError) as e:
            if deadline.expired:
                raise FetchError("The upstream server was too slow.",
                                 detail=f"no complete answer in {timeout}s") from e
            raise
        if deadline.expired:  # a shut-down socket can also read as a clean end: the body may be cut short
            raise FetchError("The upstream server was too slow.", detail=f"no complete answer in {timeout}s")


def _origin(url: str) -> tuple[str, str]:
    """Scheme and host:port, lower-cased (an invalid URL has none, and so differs from every other)."""
    try:
        parts = urlsplit(url)
        return parts.scheme.lower(), parts.netloc.rpartition("@")[2].lower()
    except ValueError:
        return "", url


def _netloc(url: str) -> str:
    """The host (and port) of a URL for a message: never the user:password@ a redirect may carry."""
    try:
        return urlsplit(url).netloc.rpartition("@")[2][:200]
    except ValueError:
        return "(an invalid URL)"


def host_name_problem(host: str) -> str | None:
    """Why `host` cannot be a DNS name to connect to (an empty label, as in `a..b`, or one over 63 characters,
    RFC 1035 §2.3.4), or None. IP literals and non-ASCII (IDNA) names are left to the HTTP client."""
    if not host.isascii() or host.startswith("["):
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if any(not label or len(label) > 63 for label in labels) or len(host) > 253:
        return "not a valid host name"
    return None


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(url: str) -> None:
    """Every hop, redirects included: https, or plain http only to a loopback host. Metadata and discovery
    documents are trust anchors (signing certificates, JWKS); over plain http anyone on the path could
    replace them."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise FetchError("The URL is not valid.", detail="urlsplit refused it (an IPv6 bracket)") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FetchError("Only http(s) URLs can be fetched.", detail=f"refused URL scheme {parts.scheme!r}")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise FetchError("Plain http is refused: use https (http only to a loopback host).",
                         detail=f"refused plain http to {parts.hostname!r}")


def _read(response: requests.Response, *, timeout: float, max_bytes: int) -> FetchResult:
    deadline = time.monotonic() + timeout
    with response:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError("The upstream document is too large.", detail=f"Content-Length {declared}")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("The upstream document is too large.", detail=f"over {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("The upstream server was too slow.", detail=f"not read in {timeout}s")
                chunks.append(chunk)
        except requests.RequestException as e:
            raise FetchError("The upstream server's answer could not be read.", detail=str(e)) from e
        return FetchResult(
            status=response.status_code,
            body=b"".join(chunks),
            content_type=response.headers.get("Content-Type"),
            headers={k.lower(): v for k, v in response.headers.items()},
        )
