"""SamlError: the one exception of the samlxml package (a code per failed check, a safe message, a detail).

`code` names the check that failed (e.g. ``saml_signature_invalid``) and becomes the audit reason;
`message` is a sentence safe to show to end users; `detail` is private (logs and audit only).
samlxml imports nothing else from `broker`; the upstream connector translates SamlError into LoginError.
"""

from __future__ import annotations


class SamlError(Exception):
    """A SAML document was refused. Never carries attacker-controlled text in `message`."""

    def __init__(self, code: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail
        # set when the refusal came after the signature, issuer and time checks passed (an authentic assertion
        # that is not for this sign-in): lets the caller tell a replay of a used one from a stray one
        self.assertion_id: str | None = None

    def __repr__(self) -> str:
        return f"SamlError(code={self.code!r}, message={self.message!r})"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
