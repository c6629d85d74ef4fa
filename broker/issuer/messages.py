"""The issuer's framework-free HTTP values and its errors: what web/ hands in and gets back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from broker.errors import OAuthError


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request to a token-style endpoint. Header names are matched case-insensitively."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpResponse:
    """status, headers, and a body: a dict is sent as JSON, a str as is."""

    status: int
    headers: Mapping[str, str]
    body: dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class EndSession:
    """A checked RP-initiated logout request: where to go afterwards (None: the broker's own page), and the
    `sid` of the id_token_hint, if one was given. `hint_revoked`: the hint was signed with a revoked key and read
    as no hint."""

    target: str | None
    hint_sid: str | None
    hint_revoked: bool = False


@dataclass(frozen=True, slots=True)
class AppAnswer:
    """An authorization response (or error) for the app: `params` for its `redirect_uri`, added to the query
    (response_mode=query, RFC 6749 §4.1.2) or POSTed by the browser (form_post, OAuth 2.0 Form Post Response
    Mode)."""

    redirect_uri: str
    params: tuple[tuple[str, str], ...]
    form_post: bool = False

    @property
    def url(self) -> str:
        """The redirect of response_mode=query: the parameters appended to the redirect_uri's own query."""
        return add_query(self.redirect_uri, list(self.params))


def add_query(uri: str, params: list[tuple[str, str]]) -> str:
    """Append parameters to a URI's query, keeping its existing query byte for byte (RFC 6749 §3.1.2)."""
    if not params:
        return uri
    parts = urlsplit(uri)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


class SecretVerifier(Protocol):
    def verify(self, value: str, digest: str) -> bool: ...
    def tag(self, value: str) -> str: ...
    def tag_ok(self, value: str, tag: str) -> bool: ...


class AuthorizeError(OAuthError):
    """An authorization-endpoint error (RFC 6749 §4.1.2.1).

    `redirect_uri` is set only once the client and its redirect_uri were validated: then the error may
    be sent back to the app (see Issuer.error_answer); None means show an error page, never redirect.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_request",
        redirect_uri: str | None = None,
        state: str | None = None,
        detail: str | None = None,
        form_post: bool = False,
    ) -> None:
        super().__init__(message, code=code, detail=detail)
        self.redirect_uri = redirect_uri
        self.state = state
        self.form_post = form_post  # the app asked for response_mode=form_post: the error goes back that way


class RevokedHint(AuthorizeError):
    """An id_token_hint signed with a key since revoked. Read as no hint at all: one forged with the leaked key
    must gain nothing, and an app's genuine one must not stop its user from signing out."""


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive view of request headers."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._h = {k.lower(): v for k, v in headers.items()}

    def __getitem__(self, key: str) -> str:
        return self._h[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._h)

    def __len__(self) -> int:
        return len(self._h)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._h
