"""Admin request bodies: one schema for the admin API and `config apply`, strict (unknown fields refused).

Pydantic does type checks; the protocol settings (`saml`, `oidc`) and mapping rules are then validated by
the connector and claims code themselves (opening is validating), in admin/service.py.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.claims.pipeline import MAX_SUBJECT_SOURCE_CHARS
from broker.errors import ValidationFailed
from broker.model import MAX_SIGNED_TOKEN_TTL, SLUG_RE, normalize_domain, unstorable

DEFAULT_SCOPES = ("openid", "profile", "email", "groups", "offline_access")
KNOWN_SCOPES = frozenset(DEFAULT_SCOPES)
DOMAIN_MAX = 253


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _slug(value: str, what: str) -> str:
    if not SLUG_RE.match(value):
        raise ValueError(
            f"{what} must be 1-63 characters of lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit"
        )
    return value


SLUG_JSON_PATTERN = SLUG_RE.pattern.replace("\\Z", "$")  # the same rule in JSON Schema's (ECMA-262) syntax


BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _display_name(value: str) -> str:
    """A name shown to admins: no control characters, and no bidi embedding/override/isolate characters,
    which make `invoice\u202egnp.exe` display as `invoiceexe.png`."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or ch in BIDI_CONTROLS for ch in value):
        raise ValueError("must not contain control or text-direction override characters")
    return value


class TenantCreate(Strict):
    slug: str = Field(json_schema_extra={"pattern": SLUG_JSON_PATTERN})
    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return _display_name(v)

    @field_validator("slug")
    @classmethod
    def _check_slug(cls, v: str) -> str:
        return _slug(v, "slug")


class TenantPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)  # a merge patch: absent = unchanged

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        return None if v is None else _display_name(v)


MAX_ADMIN_KEY_LIFETIME = 5 * 365 * 86400


class AdminKeyCreate(Strict):
    label: str = Field(default="", max_length=200)
    # seconds from now until the key stops working; None: until revoked
    expires_in: int | None = Field(default=None, ge=300, le=MAX_ADMIN_KEY_LIFETIME)

    @field_validator("label")
    @classmethod
    def _check_label(cls, v: str) -> str:
        return _display_name(v)


class MappingBody(Strict):
    preset: str | None = None
    rules: list[dict[str, Any]] = Field(default_factory=list, max_length=200)
    subject_source: str | None = Field(default=None, max_length=MAX_SUBJECT_SOURCE_CHARS)


class ConnectionBody(Strict):
    slug: str = Field(json_schema_extra={"pattern": SLUG_JSON_PATTERN})
    protocol: Literal["saml", "oidc"]
    domains: list[str] = Field(default_factory=list, max_length=500)
    restrict_to_domains: bool = False
    enabled: bool = True
    mapping: MappingBody = Field(default_factory=MappingBody)
    saml: dict[str, Any] | None = None
    oidc: dict[str, Any] | None = None

    @field_validator("slug")
    @classmethod
    def _check_slug(cls, v: str) -> str:
        return _slug(v, "slug")

    @field_validator("domains")
    @classmethod
    def _check_domains(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for d in v:
            d2 = normalize_domain(d) if len(d) <= DOMAIN_MAX else None
            if not d2 or len(d2) > DOMAIN_MAX or "@" in d2 or "/" in d2 or " " in d2 or "." not in d2:
                raise ValueError(f"{d!r} is not a domain name (e.g. example.com)")
            if d2 not in out:
                out.append(d2)
        return out


def _check_redirect_uri(uri: str) -> str:
    if len(uri) > 2000:
        raise ValueError("redirect URIs are limited to 2000 characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or unicodedata.category(ch) == "Cf" for ch in uri):
        # Cf: bidi overrides and zero-width characters, which make one URI display as another
        raise ValueError(f"{uri!r} contains whitespace, control or invisible characters (percent-encode them)")
    parts = urlsplit(uri)
    if not parts.scheme or parts.scheme in ("javascript", "data", "file", "vbscript"):
        raise ValueError(f"{uri!r} is not an absolute redirect URI")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{uri!r} must not carry credentials (user:password@)")
    try:
        port = parts.port  # raises ValueError for a port outside 0-65535 or not a number
    except ValueError:
        port = 0
    if port == 0 and parts.netloc.rpartition("]")[2].count(":") == 1:  # ":0", or a port that did not parse
        raise ValueError(f"{uri!r} has an invalid port")
    if parts.fragment or "#" in uri:
        raise ValueError(f"{uri!r} must not contain a fragment (RFC 6749 §3.1.2)")
    if parts.scheme in ("http", "https") and not parts.hostname:
        raise ValueError(f"{uri!r} has no host")
    if "*" in uri:
        raise ValueError(f"{uri!r}: wildcards are not allowed; redirect URIs match exactly")
    return uri


class AppBody(Strict):
    name: str = Field(min_length=1, max_length=200)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return _display_name(v)
    redirect_uris: list[str] = Field(min_length=1, max_length=50)
    post_logout_redirect_uris: list[str] = Field(default_factory=list, max_length=50)
    public: bool = False
    client_id: str | None = Field(default=None, min_length=3, max_length=100, pattern=r"^[A-Za-z0-9._~-]+$")
    client_secret: str | None = Field(default=None, min_length=32, max_length=200)
    allowed_scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_SCOPES))
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "none"] | None = None
    id_token_signed_response_alg: Literal["RS256", "ES256"] = "RS256"
    access_token_ttl: int = Field(default=600, ge=30, le=MAX_SIGNED_TOKEN_TTL)
    id_token_ttl: int = Field(default=600, ge=30, le=MAX_SIGNED_TOKEN_TTL)
    refresh_token_ttl: int = Field(default=30 * 86400, ge=60, le=365 * 86400)
    subject_type: Literal["public", "pairwise"] = "public"

    @field_validator("redirect_uris", "post_logout_redirect_uris")
    @classmethod
    def _check_uris(cls, v: list[str]) -> list[str]:
        return [_check_redirect_uri(u) for u in v]

    @field_validator("allowed_scopes")
    @classmethod
    def _check_scopes(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in KNOWN_SCOPES]
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; known: {sorted(KNOWN_SCOPES)}")
        if "openid" not in v:
            raise ValueError("allowed_scopes must include openid")
        return v


class ConnectionTest(Strict):
    """Body of the mapping dry run: raw upstream attributes (and optionally NameID / OIDC sub)."""

    attributes: dict[str, list[str] | str] = Field(default_factory=dict)
    subject: str | None = None
    subject_format: str | None = None
    issuer: str | None = None
    mapping: MappingBody | None = None


M = TypeVar("M", bound=BaseModel)


class DuplicateKey(ValueError):
    """A JSON object names the same member twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


MAX_JSON_DEPTH = 100  # arrays and objects inside each other (a real mapping nests about 6 deep)


class TooDeep(ValueError):
    """A JSON document nests arrays and objects more than MAX_JSON_DEPTH levels deep (what reads it later,
    copies and checks alike, may recurse per level)."""

    def __init__(self) -> None:
        super().__init__(f"nested more than {MAX_JSON_DEPTH} levels deep")


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items if isinstance(item, dict | list))
    return False


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def loads_admin_json(raw: str | bytes) -> Any:
    """Parse an admin's JSON document, refusing an object that names a member twice (DuplicateKey).
    RFC 8259 §4 leaves the meaning of duplicates to each parser; Python keeps the last, others the first,
    so a duplicated `redirect_uris` or `allow_sha1` could mean one thing to a reviewer's tool and another
    here. YAML config files refuse duplicates the same way. Raises ValueError (DuplicateKey included),
    UnicodeDecodeError or RecursionError like json.loads, and TooDeep (a ValueError) beyond MAX_JSON_DEPTH."""
    data = json.loads(raw, object_pairs_hook=_unique_members)
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise TooDeep
    return data


def unstorable_text(data: Any) -> str | None:
    """The path of the first string (key or value) in a JSON or YAML document holding a NUL character or a lone
    UTF-16 surrogate, else None. JSON's \\u escapes can carry both; neither can be stored (PostgreSQL text,
    UTF-8), signed into a token or shown on a page, so they are refused on the way in. Iterative: any depth."""
    stack: list[tuple[str, Any]] = [("(body)", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if unstorable(value):
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{key}" if path != "(body)" else str(key)
                if isinstance(key, str) and unstorable(key):
                    return path
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{n}]", item) for n, item in enumerate(value))
    return None


def parse(model: type[M], data: Any) -> M:
    """Validate `data` against `model`; raise ValidationFailed listing every problem by field path."""
    if not isinstance(data, dict):
        raise ValidationFailed("The request body must be a JSON object.", code="invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            path = ".".join(str(p) for p in err["loc"]) or "(body)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append({"field": path, "problem": msg})
        first = problems[0]
        raise ValidationFailed(
            f"Invalid field {first['field']}: {first['problem']}.",
            code="invalid_request",
            details={"errors": problems},
        ) from None
