"""The issuer's framework-free HTTP values and its errors: what web/ hands in and gets back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    `sid` of the id_token_hint, if one was given."""

    target: str | None
    hint_sid: str | None


class SecretVerifier(Protocol):
    def verify(self, value: str, digest: str) -> bool: ...
    def tag(self, value: str) -> str: ...
    def tag_ok(self, value: str, tag: str) -> bool: ...


class AuthorizeError(OAuthError):
    """An authorization-endpoint error (RFC 6749 §4.1.2.1).

    `redirect_uri` is set only once the client and its redirect_uri were validated: then the error may
    be sent back to the app (see Issuer.error_redirect); None means show an error page, never redirect.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_request",
        redirect_uri: str | None = None,
        state: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message, code=code, detail=detail)
        self.redirect_uri = redirect_uri
        self.state = state


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
