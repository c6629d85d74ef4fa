"""OpenID Provider discovery and JWKS documents: fetching, validation, and an in-process cache per issuer.

Discovery follows OpenID Connect Discovery 1.0 §4 (`{issuer}/.well-known/openid-configuration`, the
document's `issuer` identical to the configured one, §4.3). Two vendor quirks are handled explicitly,
by name, and nowhere else:

- Microsoft Entra ID multi-tenant endpoints (`.../common/v2.0`, `.../organizations/v2.0`) publish the
  issuer *template* `https://login.microsoftonline.com/{tenantid}/v2.0`; the ID token's `iss` must then
  equal that template with the token's own `tid` substituted (see `ProviderMetadata.tenant_issuer`).
- Google documents that its ID tokens carry `iss` either `https://accounts.google.com` or the bare
  `accounts.google.com` (and its legacy discovery document says the latter).

Documents are cached per issuer (discovery) and per `jwks_uri` (keys) for `ttl` seconds; a failed
refresh keeps the last good copy and retries after `retry_after` seconds. Without a good copy, a failure
raises LoginError(code="oidc_provider_unavailable") with status 503 (unreachable) or 502 (bad answer).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from broker.errors import BrokerError, LoginError
from broker.ports import Clock, Fetcher
from broker.upstream.sources import host_name_problem, is_loopback_host

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "OidcMetadataCache",
    "ProviderMetadata",
    "Jwks",
    "DEFAULT_CACHE",
    "check_endpoint_url",
    "discovery_url",
    "issuer_aliases",
    "multi_tenant_template",
    "parse_jwks",
    "parse_provider_metadata",
    "provider_unavailable",
]

MAX_DOCUMENT_BYTES = 1024 * 1024

# Everything a Fetcher may raise for a failed request: our own errors (size cap, unreachable), the
# requests library's, and socket-level ones. Nothing broader: a bug must not look like an outage.
FETCH_ERRORS: tuple[type[Exception], ...] = (BrokerError, requests.RequestException, OSError)

_ENTRA_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.partner.microsoftonline.cn",
    }
)
_ENTRA_MULTI_TENANT = re.compile(r"^https://(?P<host>[a-z0-9.-]+)/(?:common|organizations)/v2\.0/?\Z")
_ENTRA_TEMPLATE = "https://{host}/{{tenantid}}/v2.0"
_GOOGLE_ISSUER = "https://accounts.google.com"
_GOOGLE_ALIASES = frozenset({_GOOGLE_ISSUER, "accounts.google.com"})


def provider_unavailable(what: str, issuer: str, detail: str, *, status: int,
                         cause: BaseException | None = None) -> LoginError:
    """The one error for an OP that cannot be reached or answers garbage (502 bad answer, 503 unreachable).
    The sentence says which: a 502 arrived but was not usable (an HTTP error, not JSON, not the document
    expected); a 503 is a failed exchange, named by the fetcher's own safe sentence when there is one (too
    slow, too large, a refused redirect), so "could not be reached" is said only when that is what happened."""
    if status == 502:
        message = (f"The identity provider answered, but its answer could not be used ({what}). "
                   "Try again later; if this goes on, ask the administrator to check the connection.")
    elif isinstance(cause, BrokerError) and cause.message:
        message = f"The exchange with the identity provider ({what}) failed: {cause.message} Try again in a moment."
    else:
        message = f"The identity provider could not be reached ({what}). Try again in a moment."
    return LoginError(message, code="oidc_provider_unavailable", detail=f"{issuer}: {detail}", status=status)


def _discovery_invalid(issuer: str, detail: str) -> LoginError:
    return LoginError(
        "The identity provider's OpenID configuration is not usable with this connection.",
        code="oidc_discovery_invalid",
        detail=f"{issuer}: {detail}",
        status=502,
    )


def check_endpoint_url(url: object) -> str | None:
    """Why `url` is not an acceptable OP endpoint (https, or http on a loopback host), or None if it is."""
    if not isinstance(url, str) or not url:
        return "not a string"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a URL"
    if parts.fragment or not parts.hostname:
        return "not an absolute URL without fragment"
    problem = host_name_problem(parts.hostname)
    if problem is not None:
        return problem
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    return "must use https (plain http only on a loopback host)"


def discovery_url(issuer: str) -> str:
    """OIDC Discovery §4: the issuer without a trailing slash, plus the well-known path."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def multi_tenant_template(configured_issuer: str) -> str | None:
    """The Entra ID issuer template for a `common`/`organizations` v2.0 issuer, else None."""
    m = _ENTRA_MULTI_TENANT.match(configured_issuer)
    if m is None or m.group("host") not in _ENTRA_HOSTS:
        return None
    return _ENTRA_TEMPLATE.format(host=m.group("host"))


def issuer_aliases(configured_issuer: str) -> frozenset[str]:
    """The `iss` values that name the configured issuer: itself, plus Google's documented bare form."""
    if configured_issuer == _GOOGLE_ISSUER:
        return _GOOGLE_ALIASES
    return frozenset({configured_issuer})


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The validated subset of an OP's discovery document that the connector uses."""

    issuer: str  # the configured issuer (the document's, or its documented alias)
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    iss_parameter_supported: bool  # RFC 9207 authorization_response_iss_parameter_supported
    tenant_issuer_template: str | None = None  # Entra ID multi-tenant: ".../{tenantid}/v2.0"
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()

    def tenant_issuer(self, tid: str) -> str:
        """The issuer of tenant `tid` under the Entra multi-tenant template."""
        assert self.tenant_issuer_template is not None
        return self.tenant_issuer_template.replace("{tenantid}", tid)


def _load_json_object(body: bytes) -> Mapping[str, Any] | None:
    try:
        # utf-8-sig: some OPs (Entra ID tenant endpoints) prefix the document with a UTF-8 BOM.
        doc = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return None
    return doc if isinstance(doc, dict) else None


def _str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def parse_provider_metadata(body: bytes, configured_issuer: str) -> ProviderMetadata:
    """Validate a discovery document for `configured_issuer` (OIDC Discovery §3, §4.3).

    Raises LoginError(code="oidc_discovery_invalid") naming the first field that is wrong.
    """
    doc = _load_json_object(body)
    if doc is None:
        raise _discovery_invalid(configured_issuer, "discovery document is not a JSON object")

    # §4.3: the issuer in the document is identical to the one used to find it. Explicit exceptions only.
    doc_issuer = doc.get("issuer")
    template: str | None = None
    if not isinstance(doc_issuer, str):
        raise _discovery_invalid(configured_issuer, "discovery document has no issuer")
    if doc_issuer not in issuer_aliases(configured_issuer):
        template = multi_tenant_template(configured_issuer)
        if template is None or doc_issuer != template:
            raise _discovery_invalid(
                configured_issuer, f"discovery issuer {doc_issuer!r} differs from the configured issuer"
            )

    endpoints: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = doc.get(name)
        problem = check_endpoint_url(value)
        if problem is not None:
            raise _discovery_invalid(configured_issuer, f"{name}: {problem}")
        assert isinstance(value, str)
        endpoints[name] = value
    userinfo = doc.get("userinfo_endpoint")
    if userinfo is not None and check_endpoint_url(userinfo) is not None:
        raise _discovery_invalid(configured_issuer, f"userinfo_endpoint: {check_endpoint_url(userinfo)}")
    response_types = doc.get("response_types_supported")
    if isinstance(response_types, list) and "code" not in response_types:
        raise _discovery_invalid(configured_issuer, "the OP does not support response_type=code")

    return ProviderMetadata(
        issuer=configured_issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        jwks_uri=endpoints["jwks_uri"],
        userinfo_endpoint=userinfo if isinstance(userinfo, str) else None,
        iss_parameter_supported=doc.get("authorization_response_iss_parameter_supported") is True,
        tenant_issuer_template=template,
        id_token_signing_alg_values_supported=_str_tuple(doc.get("id_token_signing_alg_values_supported")),
        token_endpoint_auth_methods_supported=_str_tuple(doc.get("token_endpoint_auth_methods_supported")),
    )


@dataclass(frozen=True, slots=True)
class Jwks:
    """An OP's public signing keys (asymmetric, `use` absent or `sig`), and what was skipped and why."""

    keys: tuple[Key, ...]
    skipped: tuple[str, ...] = ()

    def by_kid(self, kid: str | None) -> tuple[Key, ...]:
        if kid is None:
            return self.keys
        return tuple(k for k in self.keys if k.kid == kid)


_KEY_TYPES: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}


def parse_jwks(body: bytes, source: str) -> Jwks:
    """Parse a JWK Set (RFC 7517 §5) keeping only public signature keys; a key we cannot use is skipped.

    Raises LoginError(code="oidc_provider_unavailable", status=502) when the document is not a JWK Set.
    """
    doc = _load_json_object(body)
    raw_keys = doc.get("keys") if doc is not None else None
    if not isinstance(raw_keys, list):
        raise provider_unavailable(
            "signing keys", source, "JWKS is not a JSON object with a keys list", status=502
        )
    keys: list[Key] = []
    skipped: list[str] = []
    for i, raw in enumerate(raw_keys):
        label = f"key {i}" + (f" (kid {raw.get('kid')!r})" if isinstance(raw, dict) else "")
        if not isinstance(raw, dict):
            skipped.append(f"{label}: not an object")
            continue
        if raw.get("use", "sig") != "sig":
            skipped.append(f"{label}: use={raw.get('use')!r}")
            continue
        key_cls = _KEY_TYPES.get(str(raw.get("kty")))
        if key_cls is None:  # "oct" (symmetric) never verifies an upstream ID token
            skipped.append(f"{label}: kty={raw.get('kty')!r}")
            continue
        if any(p in raw for p in ("d", "p", "q", "k")):
            skipped.append(f"{label}: contains private material")
            continue
        if isinstance(raw.get("kid"), str) and sum(1 for k in keys if k.kid == raw["kid"]) >= MAX_KEYS_PER_KID:
            # every key of a token's kid is tried: a set with hundreds under one kid costs seconds per login
            skipped.append(f"{label}: more than {MAX_KEYS_PER_KID} keys with this kid")
            continue
        try:
            key = key_cls.import_key(dict(raw))
        except (JoseError, ValueError, TypeError, KeyError) as exc:  # KeyError: a curve joserfc does not know
            skipped.append(f"{label}: {type(exc).__name__}")
            continue
        problem = _rsa_key_problem(key)
        if problem:
            skipped.append(f"{label}: {problem}")
            continue
        keys.append(key)
    return Jwks(keys=tuple(keys), skipped=tuple(skipped))


MAX_KEYS_PER_KID = 4
MAX_RSA_BITS = 8192


def _rsa_key_problem(key: Key) -> str | None:
    """Why an RSA key is not one an OP would sign with, else None: a modulus over 8192 bits, or a public exponent
    that is even, below 3 or over 32 bits (verifying with a 3000-bit exponent costs as much as signing)."""
    if not isinstance(key, RSAKey):
        return None
    numbers = key.public_key.public_numbers()
    if numbers.n.bit_length() > MAX_RSA_BITS:
        return f"RSA modulus of {numbers.n.bit_length()} bits"
    if numbers.e < 3 or numbers.e % 2 == 0 or numbers.e.bit_length() > 32:
        return "RSA public exponent out of range"
    return None


@dataclass(slots=True)
class _Entry:
    value: Any
    fetched_at: float
    next_attempt: float  # do not try the network again before this (after a failure)


class OidcMetadataCache:
    """Discovery documents per issuer and JWK Sets per `jwks_uri`, kept in-process with keep-last-good.

    Thread-safe; network I/O happens outside the lock (two threads may fetch at once, harmlessly).
    Time comes from the Clock passed to each call, so tests control expiry without sleeping.
    """

    def __init__(self, *, ttl: float = 3600.0, retry_after: float = 30.0, refetch_window: float = 10.0) -> None:
        self.ttl = ttl
        self.retry_after = retry_after
        self.refetch_window = refetch_window
        self._lock = threading.Lock()
        self._providers: dict[str, _Entry] = {}
        self._jwks: dict[str, _Entry] = {}
        self._forced: dict[str, float] = {}  # jwks_uri -> when a refetch was last forced (an unknown kid)

    def clear(self) -> None:
        with self._lock:
            self._providers.clear()
            self._jwks.clear()
            self._forced.clear()

    def provider(self, issuer: str, *, fetcher: Fetcher, clock: Clock, timeout: float) -> ProviderMetadata:
        """The validated discovery document for `issuer` (cached; refetched after ttl)."""
        now = clock.now()
        with self._lock:
            entry = self._providers.get(issuer)
        if entry is not None and (now - entry.fetched_at < self.ttl or now < entry.next_attempt):
            value: ProviderMetadata = entry.value
            return value
        try:
            body = _fetch(fetcher, discovery_url(issuer), "discovery", issuer, timeout)
            metadata = parse_provider_metadata(body, issuer)
        except LoginError:
            if entry is None:
                raise
            with self._lock:
                entry.next_attempt = now + self.retry_after
            kept: ProviderMetadata = entry.value
            return kept
        with self._lock:
            self._providers[issuer] = _Entry(metadata, now, now)
        return metadata

    def jwks(
        self,
        jwks_uri: str,
        *,
        issuer: str,
        fetcher: Fetcher,
        clock: Clock,
        timeout: float,
        force: bool = False,
    ) -> Jwks:
        """The OP's signing keys (cached). `force` (a token names a kid the cached set lacks: the OP may have
        rotated) refetches now, at most once per `refetch_window` per jwks_uri in this process: a flood of
        tokens with made-up kids reaches the OP once per window per worker, and every worker's own copy is
        renewed within a window of the OP's rotation (a fleet-wide limit would leave the other workers' copies
        stale, refusing good tokens, until the window ran out)."""
        now = clock.now()
        with self._lock:
            entry = self._jwks.get(jwks_uri)
            if force:
                last = self._forced.get(jwks_uri)
                if last is not None and 0 <= now - last < self.refetch_window:
                    force = False
                else:
                    self._forced[jwks_uri] = now
        fresh = entry is not None and (now - entry.fetched_at < self.ttl or now < entry.next_attempt)
        if entry is not None and fresh and not force:
            value: Jwks = entry.value
            return value
        try:
            keys = parse_jwks(_fetch(fetcher, jwks_uri, "signing keys", issuer, timeout), issuer)
        except LoginError:
            if entry is None:
                raise
            with self._lock:
                entry.next_attempt = now + self.retry_after
            kept: Jwks = entry.value
            return kept
        with self._lock:
            self._jwks[jwks_uri] = _Entry(keys, now, now)
        return keys


def _fetch(fetcher: Fetcher, url: str, what: str, issuer: str, timeout: float) -> bytes:
    try:
        result = fetcher.get(url, timeout=timeout, max_bytes=MAX_DOCUMENT_BYTES)
    except FETCH_ERRORS as exc:
        raise provider_unavailable(
            what, issuer, f"GET {url}: {type(exc).__name__}: {exc}", status=503, cause=exc
        ) from exc
    if result.status != 200:
        raise provider_unavailable(what, issuer, f"GET {url}: HTTP {result.status}", status=502)
    return result.body


DEFAULT_CACHE = OidcMetadataCache()
"""The process-wide cache every OidcConnector uses unless it is given its own (tests do)."""
