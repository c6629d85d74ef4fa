"""The BrokerError tree: every error carries a code, a safe message, and a private detail.

`code` is stable and machine-readable (it becomes the audit `reason` and the JSON `error`);
`message` is a sentence safe to show to anyone; `detail` is for logs and audit only, never rendered.
Each surface (admin JSON, OAuth JSON, redirect with error, HTML page) translates these once, in web/errors.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BrokerError(Exception):
    """Base of every error the broker raises on purpose."""

    status: int = 400
    default_code: str = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        detail: str | None = None,
        details: Mapping[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.detail = detail
        self.details: dict[str, Any] = dict(details or {})
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


# --- admin API / validation -------------------------------------------------------------------


class ValidationFailed(BrokerError):
    status = 400
    default_code = "invalid_request"


class NotFound(BrokerError):
    status = 404
    default_code = "not_found"


class Conflict(BrokerError):
    status = 409
    default_code = "conflict"


class VersionConflict(BrokerError):
    """A write was made against a version of a resource that is no longer current: someone else changed it
    in between. `status` is 412 when the client named the version (If-Match), else 409."""

    status = 412
    default_code = "precondition_failed"


class Unauthorized(BrokerError):
    status = 401
    default_code = "unauthorized"


class Forbidden(BrokerError):
    status = 403
    default_code = "forbidden"


class PayloadTooLarge(BrokerError):
    status = 413
    default_code = "payload_too_large"


class ServiceUnavailable(BrokerError):
    """A backing service (database, state store, upstream) cannot be reached right now."""

    status = 503
    default_code = "temporarily_unavailable"


# --- logins -----------------------------------------------------------------------------------


class LoginError(BrokerError):
    """An upstream login was refused. `code` names the failed check (e.g. saml_signature_invalid)."""

    status = 400
    default_code = "login_failed"


class StateStoreError(ServiceUnavailable):
    default_code = "state_store_unavailable"


class ConfigError(BrokerError):
    """Settings or configuration that cannot be used; raised at start-up or by `config apply`."""

    status = 400
    default_code = "invalid_config"


# --- OAuth 2.0 / OIDC downstream --------------------------------------------------------------


class OAuthError(BrokerError):
    """An RFC 6749 error. `code` is the OAuth error code (invalid_grant, invalid_client, ...)."""

    status = 400
    default_code = "invalid_request"
