"""The person who signs in at the development IdP: what the login form asks for, validated.

There is no password and no directory: whoever uses the dev IdP types an email address and a name and
ticks groups. The subject is stable per email address (an opaque digest, never the address itself).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.errors import ValidationFailed

GROUPS: tuple[str, ...] = ("Everyone", "Engineering", "Admins")
DEFAULT_EMAIL = "ada@example.com"
DEFAULT_NAME = "Ada Lovelace"
_EMAIL = re.compile(r"^[^@\s<>\"]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,63}\Z")


@dataclass(frozen=True, slots=True)
class DevUser:
    email: str
    name: str
    groups: tuple[str, ...]

    @property
    def subject(self) -> str:
        """Stable and opaque per email address: the SAML persistent NameID and the OIDC `sub`."""
        return "dev-" + hashlib.sha256(b"broker-dev-idp\x00" + self.email.lower().encode()).hexdigest()[:32]

    @property
    def given_name(self) -> str:
        return self.name.rsplit(" ", 1)[0] if " " in self.name else self.name

    @property
    def family_name(self) -> str | None:
        return self.name.rsplit(" ", 1)[1] if " " in self.name else None


def user_from_form(form: Mapping[str, str], groups: Sequence[str]) -> DevUser:
    """The login form's fields; `groups` are the ticked checkboxes (only known group names are kept)."""
    email = (form.get("email") or "").strip()
    name = " ".join((form.get("name") or "").split())
    if not _EMAIL.match(email):
        raise ValidationFailed("Enter an email address such as ada@example.com.", code="dev_idp_invalid_email")
    if not name or len(name) > 100:
        raise ValidationFailed("Enter a name (at most 100 characters).", code="dev_idp_invalid_name")
    chosen = tuple(g for g in GROUPS if g in set(groups))
    return DevUser(email=email, name=name, groups=chosen)
