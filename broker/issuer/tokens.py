"""The tokens the issuer signs and verifies: ID tokens (OIDC Core §2) and JWT access tokens (RFC 9068).

All JOSE work is joserfc. Signing uses the tenant's active key for the app's algorithm; verification
accepts any key the tenant publishes (so a rotation keeps earlier tokens valid while their key is in
the JWKS), requires the header `alg` to equal that key's own `alg` (never `none`, never HMAC, never a
public key used as an HMAC secret), and checks `iss` against this tenant's issuer.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, GuestProtocol, RSAKey
from joserfc.jwt import JWTClaimsRegistry

from broker.issuer.keys import KeyRing
from broker.model import Profile, SigningKey

ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 (a media type, not a secret)
VERIFY_ALGS = ("RS256", "ES256")

# Claims a profile's `extra` may never set: they are the token's own (OIDC Core §2, §5.1, RFC 9068 §2.2).
RESERVED_CLAIMS = frozenset(
    {
        "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "auth_time", "nonce", "acr", "amr", "azp",
        "at_hash", "c_hash", "sid", "scope", "client_id", "gid", "tenant", "connection", "idp",
        "email", "email_verified", "name", "given_name", "family_name", "groups", "roles", "typ",
        "cnf", "act", "may_act", "events",
    }
)


ISSUED_LEEWAY_SECONDS = 60
"""How far in the future another replica's iat/nbf may be: its clock may run a little ahead of this one's."""


class _OwnClaims(JWTClaimsRegistry):
    """The claims of a token this broker signed: iat and nbf with ISSUED_LEEWAY_SECONDS, for replicas whose
    clocks differ a little (a token fresh from one must not be "issued in the future" on the next); exp
    exactly, with no leeway: a token ends when it says it does."""

    def validate_exp(self, value: object) -> None:
        leeway, self.leeway = self.leeway, 0
        try:
            super().validate_exp(value)
        finally:
            self.leeway = leeway


class InvalidToken(Exception):
    """A presented token failed verification. `reason` is for audit and logs, never for the response."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    key: SigningKey


def at_hash(access_token: str, alg: str) -> str:
    """OIDC Core §3.1.3.6: left half of the hash of the ASCII access token, base64url without padding."""
    if alg not in ("RS256", "ES256"):
        raise ValueError(f"no at_hash rule for {alg}")
    half = hashlib.sha256(access_token.encode("ascii")).digest()[:16]
    return base64.urlsafe_b64encode(half).rstrip(b"=").decode("ascii")


def profile_claims(profile: Profile, scope: Sequence[str]) -> dict[str, Any]:
    """The normalized profile's claims for a scope (OIDC Core §5.4; SPEC "Normalized profile").

    `openid` always carries sub, tenant, connection, idp and the mapping's extra claims; `profile`,
    `email` and `groups` add theirs. Absent values are omitted; groups/roles are always lists.
    """
    claims: dict[str, Any] = {"sub": profile.sub}
    if "openid" not in scope:
        return claims
    for name, value in profile.extra.items():
        if name not in RESERVED_CLAIMS:
            claims[name] = value
    claims.update({"tenant": profile.tenant, "connection": profile.connection, "idp": profile.idp})
    if "profile" in scope:
        for name, v in (
            ("name", profile.name),
            ("given_name", profile.given_name),
            ("family_name", profile.family_name),
        ):
            if v is not None:
                claims[name] = v
    if "email" in scope:
        if profile.email is not None:
            claims["email"] = profile.email
        if profile.email_verified is not None:
            claims["email_verified"] = profile.email_verified
    if "groups" in scope:
        claims["groups"] = list(profile.groups)
        claims["roles"] = list(profile.roles)
    return claims


class TokenCodec:
    """Signs and verifies the issuer's JWTs with joserfc."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keys = keyring

    def sign(self, key: SigningKey, claims: Mapping[str, Any], *, typ: str) -> str:
        header = {"alg": key.alg, "kid": key.kid, "typ": typ}
        return jwt.encode(header, dict(claims), self._keys.private(key), algorithms=[key.alg])

    def verify(
        self,
        token: str,
        published: Sequence[SigningKey],
        *,
        issuer: str,
        now: float,
        typ: str | None,
        check_exp: bool = True,
        revoked: frozenset[str] = frozenset(),
    ) -> VerifiedToken:
        """Checks, in order: compact JWS; header kid names a key this tenant publishes; header alg equals
        that key's alg (RS256/ES256 only); signature; typ (when given); iss; exp (unless check_exp is
        False, e.g. an id_token_hint); iat/nbf not in the future. A kid among `revoked` fails with the reason
        `revoked_kid` (nothing is verified with it)."""
        by_kid = {k.kid: k for k in published}
        chosen: list[SigningKey] = []

        def resolve(obj: GuestProtocol) -> RSAKey | ECKey:
            header = obj.headers()
            kid = header.get("kid")
            alg = header.get("alg")
            if isinstance(kid, str) and kid in revoked:
                raise InvalidToken("revoked_kid")
            if not isinstance(kid, str) or kid not in by_kid:
                raise InvalidToken("unknown_kid")
            key = by_kid[kid]
            if alg != key.alg or alg not in VERIFY_ALGS:
                raise InvalidToken("alg_mismatch")
            chosen.append(key)
            return self._keys.public(key)

        if token.count(".") != 2 or len(token) > 16384:
            raise InvalidToken("malformed")
        try:
            decoded = jwt.decode(token, resolve, algorithms=list(VERIFY_ALGS))
        except InvalidToken:
            raise
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise InvalidToken(f"jose:{type(exc).__name__}") from exc
        if not chosen:
            raise InvalidToken("no_key")
        header, claims = decoded.header, decoded.claims

        if typ is not None:
            got = str(header.get("typ", "")).lower()
            if got not in (typ, f"application/{typ}"):
                raise InvalidToken("typ_mismatch")
        options: dict[str, Any] = {"iss": {"essential": True, "value": issuer}, "sub": {"essential": True}}
        if check_exp:
            options["exp"] = {"essential": True}
        registry = _OwnClaims(now=int(now), leeway=ISSUED_LEEWAY_SECONDS, **options)
        try:
            if not check_exp:
                claims_checked = {k: v for k, v in claims.items() if k != "exp"}
                registry.validate(claims_checked)
            else:
                registry.validate(claims)
        except JoseError as exc:
            raise InvalidToken(f"claims:{type(exc).__name__}") from exc
        return VerifiedToken(header=header, claims=claims, key=chosen[0])
