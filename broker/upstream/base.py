"""The Connector interface every upstream protocol implements (SAML, OIDC), and the values it exchanges.

A connector is opened for one connection (one tenant's one IdP) and trusts only that connection's keys.
It keeps nothing per login on `self`: `begin()` returns the step for the browser plus what the broker must
remember; `complete()` receives that back inside the stored LoginTransaction (or None when the IdP
started the login unsolicited) and returns a verified UpstreamIdentity or raises LoginError with a code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from broker.model import LoginTransaction, UpstreamIdentity


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the browser to `url` with a 302."""

    url: str


@dataclass(frozen=True, slots=True)
class AutoPost:
    """Render a self-submitting HTML form that POSTs `fields` to `url` (SAML HTTP-POST binding)."""

    url: str
    fields: Mapping[str, str]


Step = Redirect | AutoPost


@dataclass(frozen=True, slots=True)
class BeginRequest:
    """What the broker asks of the upstream for one login."""

    txn_id: str  # opaque handle; goes out as RelayState / OIDC state material, never a URL
    login_hint: str | None = None
    force_authn: bool = False
    max_age: int | None = None
    select_account: bool = False  # the app asked the user to pick an account (prompt=select_account)


@dataclass(frozen=True, slots=True)
class BeginResult:
    step: Step
    remember: Mapping[str, str] = field(default_factory=dict)  # stored in LoginTransaction.upstream


@dataclass(frozen=True, slots=True)
class CallbackInput:
    """The upstream's answer as the web layer received it: query (GET) or form (POST) parameters."""

    method: str
    params: Mapping[str, str]
    url: str
    repeated: tuple[str, ...] = ()  # single-valued parameters that came more than once: the answer is refused


class Connector(Protocol):
    protocol: str

    def begin(self, request: BeginRequest) -> BeginResult:
        """Start an upstream login. Raises LoginError when the connection cannot log anyone in yet."""
        ...

    def transaction_id(self, callback: CallbackInput) -> str | None:
        """The login-transaction handle the upstream echoed back (SAML RelayState, OIDC state), if any."""
        ...

    def complete(self, callback: CallbackInput, txn: LoginTransaction | None) -> UpstreamIdentity:
        """Verify the upstream's answer against `txn` (None = unsolicited). Raises LoginError(code=...)."""
        ...

    def release(self, identity: UpstreamIdentity) -> bool:
        """Give back what complete() used up for `identity`, whose login could not be recorded and so did not
        happen (the database was down): True when the same answer can then be posted again (SAML: its
        assertion leaves the replay cache), False when it cannot (OIDC: the OP's code is spent)."""
        ...
