"""What the issuer keeps in the StateStore: codes, grants, refresh tokens, revocations — and their JSON.

Every single-use or secret value (authorization codes, refresh tokens) is stored under the SHA-256
digest of the value, never the value itself: the values are 256-bit random strings, so an unkeyed
digest is enough and a leaked store gives nothing a client could present.

Keys (all prefixed "oidc:"):

- ``code:<d>``        the pending authorization code (60 s); consumed with ``StateStore.take``.
- ``code-grant:<d>``  the grant id a code leads to, written with the code and kept until every token
                      the code could yield has expired: a second redemption finds it and revokes the
                      grant even while the first redemption is still issuing (no take-then-mark gap).
- ``grant:<gid>``     one grant (code redemption and its refresh family): client, scope, profile,
                      auth_time, sid. Userinfo reads the profile from here.
- ``rt:<d>``          a live refresh token (consumed with ``take`` on every rotation).
- ``rt-family:<d>``   the grant id of a refresh token of the earlier, untagged format, kept as long as
                      the token would have lived: presenting a rotated token finds it and revokes the
                      family. Tokens issued now carry their grant id and expiry under an HMAC tag
                      (broker.issuer.grants.tagged_refresh_token) instead, so a rotation leaves nothing
                      behind in the store.
- ``deny:grant:<gid>`` / ``deny:jti:<jti>`` the denylist userinfo, introspection and refresh consult.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.model import Profile, profile_from_json, profile_to_json
from broker.ports import StateStore

PREFIX = "oidc:"
TAGGED_SEPARATOR = "~"  # in a tagged refresh token (broker.issuer.grants.tagged_refresh_token)


def digest(value: str) -> str:
    """The storage key of a secret value (code, refresh token)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# --- Profile <-> JSON --------------------------------------------------------------------------


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeRecord:
    """An issued authorization code and everything it is bound to (RFC 6749 §4.1.2, RFC 7636 §4.4)."""

    tenant_id: str
    client_id: str
    redirect_uri: str
    scope: tuple[str, ...]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    profile: Profile
    auth_time: float
    sid: str
    gid: str
    expires_at: float
    # the app and connection rows it was issued for (None in records of earlier versions): a grant stands
    # only while both still exist as they were (an app deleted and re-created under its client_id is another)
    app_id: str | None = None
    connection_id: str | None = None

    def to_bytes(self) -> bytes:
        return _dump(
            {
                "app_id": self.app_id,
                "connection_id": self.connection_id,
                "tenant_id": self.tenant_id,
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": list(self.scope),
                "nonce": self.nonce,
                "code_challenge": self.code_challenge,
                "code_challenge_method": self.code_challenge_method,
                "profile": profile_to_json(self.profile),
                "auth_time": self.auth_time,
                "sid": self.sid,
                "gid": self.gid,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> CodeRecord:
        d = json.loads(raw)
        return cls(
            tenant_id=d["tenant_id"],
            client_id=d["client_id"],
            redirect_uri=d["redirect_uri"],
            scope=tuple(d["scope"]),
            nonce=d["nonce"],
            code_challenge=d["code_challenge"],
            code_challenge_method=d["code_challenge_method"],
            profile=profile_from_json(d["profile"]),
            auth_time=float(d["auth_time"]),
            sid=d["sid"],
            gid=d["gid"],
            expires_at=float(d["expires_at"]),
            app_id=d.get("app_id"),
            connection_id=d.get("connection_id"),
        )


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """One grant: what a code redemption authorized, shared by its refresh-token family."""

    gid: str
    tenant_id: str
    client_id: str
    scope: tuple[str, ...]
    profile: Profile
    auth_time: float
    sid: str
    app_id: str | None = None  # as in CodeRecord
    connection_id: str | None = None

    def to_bytes(self) -> bytes:
        return _dump(
            {
                "app_id": self.app_id,
                "connection_id": self.connection_id,
                "gid": self.gid,
                "tenant_id": self.tenant_id,
                "client_id": self.client_id,
                "scope": list(self.scope),
                "profile": profile_to_json(self.profile),
                "auth_time": self.auth_time,
                "sid": self.sid,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> GrantRecord:
        d = json.loads(raw)
        return cls(
            gid=d["gid"],
            tenant_id=d["tenant_id"],
            client_id=d["client_id"],
            scope=tuple(d["scope"]),
            profile=profile_from_json(d["profile"]),
            auth_time=float(d["auth_time"]),
            sid=d["sid"],
            app_id=d.get("app_id"),
            connection_id=d.get("connection_id"),
        )


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A live refresh token of a grant's family. `scope` is the grant's scope (RFC 6749 §6)."""

    gid: str
    tenant_id: str
    client_id: str
    scope: tuple[str, ...]
    issued_at: float
    expires_at: float

    def to_bytes(self) -> bytes:
        return _dump(
            {
                "gid": self.gid,
                "tenant_id": self.tenant_id,
                "client_id": self.client_id,
                "scope": list(self.scope),
                "issued_at": self.issued_at,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> RefreshRecord:
        d = json.loads(raw)
        return cls(
            gid=d["gid"],
            tenant_id=d["tenant_id"],
            client_id=d["client_id"],
            scope=tuple(d["scope"]),
            issued_at=float(d["issued_at"]),
            expires_at=float(d["expires_at"]),
        )


def _dump(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")


# --- the ledger --------------------------------------------------------------------------------


class Ledger:
    """Typed access to the issuer's StateStore keys; every single-use value is consumed with take()."""

    def __init__(self, state: StateStore) -> None:
        self._state = state

    # codes: keyed by tenant, so that another tenant's token endpoint cannot even find (let alone consume,
    # or revoke the grant of) a code it did not issue
    @staticmethod
    def _code_keys(tenant_id: str, code: str) -> tuple[str, str]:
        d = digest(code)
        return f"{PREFIX}code:{tenant_id}:{d}", f"{PREFIX}code-grant:{tenant_id}:{d}"

    def put_code(self, code: str, record: CodeRecord, *, ttl: float, grant_ttl: float) -> None:
        code_key, grant_key = self._code_keys(record.tenant_id, code)
        # The grant marker first: a code is never redeemable without its reuse marker existing (one atomic
        # write in order; the marker is also first if the store applies the batch partially).
        with self._state.batch():
            self._state.put(grant_key, record.gid.encode("ascii"), grant_ttl)
            self._state.put(code_key, record.to_bytes(), ttl)

    def take_code(self, tenant_id: str, code: str) -> CodeRecord | None:
        raw = self._state.take(self._code_keys(tenant_id, code)[0])
        if raw is None:  # a code issued before codes were keyed by tenant (for one code lifetime after upgrade)
            raw = self._state.take(f"{PREFIX}code:{digest(code)}")
        return CodeRecord.from_bytes(raw) if raw is not None else None

    def code_grant(self, tenant_id: str, code: str) -> str | None:
        """The grant id of a code of this tenant that was already taken (or expired); None for a code never
        issued here."""
        raw = self._state.get(self._code_keys(tenant_id, code)[1])
        if raw is None:
            raw = self._state.get(f"{PREFIX}code-grant:{digest(code)}")
        return raw.decode("ascii") if raw is not None else None

    # grants
    def grant(self, gid: str) -> GrantRecord | None:
        if self.grant_revoked(gid):
            return None
        raw = self._state.get(f"{PREFIX}grant:{gid}")
        return GrantRecord.from_bytes(raw) if raw is not None else None

    def revoke_grant(self, gid: str, ttl: float) -> None:
        """Revoke a whole grant: its refresh family and every access token that carries its gid."""
        self._state.put(f"{PREFIX}deny:grant:{gid}", b"1", ttl)
        self._state.delete(f"{PREFIX}grant:{gid}")

    def grant_revoked(self, gid: str) -> bool:
        return self._state.get(f"{PREFIX}deny:grant:{gid}") is not None

    # access tokens
    def revoke_jti(self, jti: str, ttl: float) -> None:
        self._state.put(f"{PREFIX}deny:jti:{jti}", b"1", ttl)

    def jti_revoked(self, jti: str) -> bool:
        return self._state.get(f"{PREFIX}deny:jti:{jti}") is not None

    # refresh tokens
    def put_grant_unless_revoked(
        self, record: GrantRecord, ttl: float, refresh: tuple[str, RefreshRecord, float] | None = None
    ) -> bool:
        """The grant (and the refresh token it now offers) in one atomic write, unless the grant has been
        revoked: then nothing is written and the answer is False. Writing a revoked grant again would bring
        its family back once the deny entry expired; checking first and writing after would leave a gap."""
        puts = [(f"{PREFIX}grant:{record.gid}", record.to_bytes(), ttl)]
        if refresh is not None:
            puts += self._refresh_puts(*refresh)
        return self._state.put_all_unless(f"{PREFIX}deny:grant:{record.gid}", puts)

    @staticmethod
    def _refresh_puts(token: str, record: RefreshRecord, ttl: float) -> list[tuple[str, bytes, float]]:
        d = digest(token)
        puts = [(f"{PREFIX}rt:{d}", record.to_bytes(), ttl)]
        if TAGGED_SEPARATOR not in token:  # an untagged token (tests, or an earlier release's format)
            puts.append((f"{PREFIX}rt-family:{d}", record.gid.encode("ascii"), ttl))
        return puts

    def peek_refresh(self, token: str) -> RefreshRecord | None:
        raw = self._state.get(f"{PREFIX}rt:{digest(token)}")
        return RefreshRecord.from_bytes(raw) if raw is not None else None

    def take_refresh(self, token: str) -> RefreshRecord | None:
        raw = self._state.take(f"{PREFIX}rt:{digest(token)}")
        return RefreshRecord.from_bytes(raw) if raw is not None else None

    def refresh_family(self, token: str) -> str | None:
        """The grant id of a refresh token that was rotated away (or revoked); None if never issued."""
        raw = self._state.get(f"{PREFIX}rt-family:{digest(token)}")
        return raw.decode("ascii") if raw is not None else None
