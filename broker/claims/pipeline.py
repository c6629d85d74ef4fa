"""Claims mapping: a verified UpstreamIdentity in, the normalized Profile out -- pure, no I/O.

The working claims start as the upstream's raw attributes (by Name; FriendlyNames resolve as aliases) plus
`nameid` (the SAML NameID or OIDC `sub`) and `nameid_format`, which always reflect the identity (an attribute
of the same name is overridden). The preset's rules run, then the connection's own rules, in order.

The profile is built only from claims that a rule wrote (a raw attribute never reaches the profile unmapped;
an IdP cannot inject `roles` that no rule maps):
- `email`, `name`, `given_name`, `family_name`: the first value;
- `email_verified`: "true"/"1"/"yes" -> True, "false"/"0"/"no" -> False (any case), else None; None when
  there is no `email`; False (with a warning) when the email is not one plain address (a rule may copy any
  attribute there), or when the connection has `domains` and the email's domain is not one of them: a
  connection is trusted for its own domains, so an IdP that asserts an address elsewhere (its admin typed
  someone else's address, or a guest account) cannot hand apps a verified email it does not own;
- `name`: when absent, "given family" from whichever of the two is present;
- `groups`, `roles`: always tuples, duplicates removed, order kept;
- any other written claim goes to `extra` (a string when it has one value, a list when several), except
  scratch claims, whose names start with `_`.
`warnings` = the identity's own warnings, then the preset's (e.g. Entra ID groups overage) and the rules'.

Errors: `apply` raises MappingError only -- a `require` whose claim is absent (mapping_required_claim_missing)
or no stable subject (mapping_subject_missing). Rule problems are caught at save time by compile_mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.claims import presets, subject
from broker.claims.rules import (
    NAMEID,
    NAMEID_FORMAT,
    Claims,
    ClaimSet,
    RequiredClaimMissing,
    Rule,
    RuleError,
    compile_rules,
)
from broker.errors import LoginError, ValidationFailed
from broker.model import MappingConfig, Profile, UpstreamIdentity, email_domain

PRESET_NAMES = presets.PRESET_NAMES
NORMALIZED = ("email", "email_verified", "name", "given_name", "family_name", "groups", "roles")
MAX_SUBJECT_SOURCE_CHARS = 256

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _compile_presets() -> dict[str, tuple[Rule, ...]]:
    compiled: dict[str, tuple[Rule, ...]] = {}
    for name, raw in presets.PRESETS.items():
        try:
            compiled[name] = compile_rules(list(raw))
        except RuleError as exc:  # a bug in presets.py: fail at import, loudly
            raise RuntimeError(f"preset {name!r} does not compile: {exc.message}") from exc
    return compiled


_PRESET_RULES = _compile_presets()


class MappingError(LoginError):
    """The mapping refused a login; the message names the claim (or subject) and the connection."""

    default_code = "mapping_failed"


@dataclass(frozen=True)
class CompiledMapping:
    """A connection's mapping, validated: its preset's name and its own compiled rules."""

    preset: str
    rules: tuple[Rule, ...]
    subject_source: str | None


@dataclass(frozen=True)
class Step:
    """One rule that changed something: claim -> (values before, values after); None means absent."""

    index: int
    source: str  # "preset:<name>" or "rule"
    rule: dict[str, Any]
    changed: dict[str, tuple[list[str] | None, list[str] | None]]


@dataclass(frozen=True)
class Explanation:
    """A dry run: the profile or the error, each rule that changed a claim, the raw claims it began with."""

    profile: Profile | None
    error: MappingError | None
    steps: tuple[Step, ...]
    raw: dict[str, list[str]]


def compile_mapping(config: MappingConfig) -> CompiledMapping:
    """Validate a connection's mapping at save time. Raises ValidationFailed (RuleError for a rule)."""
    if not isinstance(config.preset, str) or config.preset not in _PRESET_RULES:
        raise ValidationFailed(
            f"Unknown mapping preset {config.preset!r}; the presets are: {', '.join(PRESET_NAMES)}.",
            code="invalid_mapping_preset",
            details={"preset": str(config.preset), "allowed": list(PRESET_NAMES)},
        )
    source = config.subject_source
    if source is not None and (
        not isinstance(source, str) or not source or len(source) > MAX_SUBJECT_SOURCE_CHARS
    ):
        raise ValidationFailed(
            f"The mapping's subject_source must be 'nameid' or an attribute name of at most "
            f"{MAX_SUBJECT_SOURCE_CHARS} characters.",
            code="invalid_mapping_subject_source",
        )
    return CompiledMapping(preset=config.preset, rules=compile_rules(config.rules), subject_source=source)


def apply(
    mapping: CompiledMapping,
    identity: UpstreamIdentity,
    *,
    tenant: str,
    tenant_id: str,
    connection: str,
    connection_id: str,
    domains: tuple[str, ...] = (),
) -> Profile:
    """Map a verified identity to the profile. Raises MappingError only. `domains`: the connection's."""
    profile, error, _, _ = _run(mapping, identity, tenant, tenant_id, connection, connection_id, record=False,
                                domains=domains)
    if error is not None:
        raise error
    assert profile is not None
    return profile


def explain(
    mapping: CompiledMapping,
    identity: UpstreamIdentity,
    *,
    tenant: str,
    tenant_id: str,
    connection: str,
    connection_id: str,
    domains: tuple[str, ...] = (),
) -> Explanation:
    """The admin dry run: what `apply` would return or refuse, and which rule changed what."""
    profile, error, steps, raw = _run(
        mapping, identity, tenant, tenant_id, connection, connection_id, record=True, domains=domains
    )
    return Explanation(profile=profile, error=error, steps=steps, raw=raw)


def _initial_claims(identity: UpstreamIdentity) -> Claims:
    claims: Claims = {}
    for name, values in identity.attributes.items():
        kept = [v for v in values if isinstance(v, str) and v]
        if isinstance(name, str) and kept:
            claims[name] = kept
    claims.pop(NAMEID, None)
    claims.pop(NAMEID_FORMAT, None)
    if identity.subject:
        claims[NAMEID] = [identity.subject]
    if identity.subject_format:
        claims[NAMEID_FORMAT] = [identity.subject_format]
    return claims


def _diff(
    before: Claims, after: Claims, touched: set[str]
) -> dict[str, tuple[list[str] | None, list[str] | None]]:
    """Claims whose values changed, and claims a rule wrote with unchanged values (now mapped)."""
    changed: dict[str, tuple[list[str] | None, list[str] | None]] = {}
    for name in list(before) + [k for k in after if k not in before]:
        old, new = before.get(name), after.get(name)
        if old != new or (name in touched and new is not None):
            changed[name] = (None if old is None else list(old), None if new is None else list(new))
    return changed


def _run(
    mapping: CompiledMapping,
    identity: UpstreamIdentity,
    tenant: str,
    tenant_id: str,
    connection: str,
    connection_id: str,
    *,
    record: bool,
    domains: tuple[str, ...] = (),
) -> tuple[Profile | None, MappingError | None, tuple[Step, ...], dict[str, list[str]]]:
    initial = _initial_claims(identity)
    raw = {k: list(v) for k, v in initial.items()} if record else {}
    aliases = {k: v for k, v in identity.friendly_names.items() if isinstance(k, str) and isinstance(v, str)}
    claims = ClaimSet(initial, aliases)
    for attribute, message in presets.WARN_IF_PRESENT.get(mapping.preset, ()):
        if claims.get(attribute) is not None:
            claims.warn(message)

    steps: list[Step] = []
    stages = (
        (f"preset:{mapping.preset}", _PRESET_RULES.get(mapping.preset, ())),
        ("rule", mapping.rules),
    )
    for label, rules in stages:
        for rule in rules:
            before = dict(claims.values) if record else {}
            claims.touched.clear()
            try:
                rule.apply(claims)
            except RequiredClaimMissing as missing:
                error = MappingError(
                    f"The identity provider of connection '{connection}' did not send the claim "
                    f"'{missing.claim}', which this connection requires.",
                    code="mapping_required_claim_missing",
                    detail=f"{label} {rule.index}: require {missing.claim!r}",
                    details={"claim": missing.claim, "connection": connection, "rule": rule.index},
                )
                return None, error, tuple(steps), raw
            if record:
                changed = _diff(before, claims.values, claims.touched)
                if changed or label == "rule":  # the connection's own rules are always listed, even as no-ops
                    steps.append(Step(index=rule.index, source=label, rule=dict(rule.spec), changed=changed))

    sources = subject_sources(mapping.preset, mapping.subject_source)
    found = subject.subject_value(identity, sources)
    if found is None:
        error = MappingError(
            f"The identity provider of connection '{connection}' sent no stable subject: the NameID is "
            f"missing or transient and none of {', '.join(sources)} was sent.",
            code="mapping_subject_missing",
            detail=f"subject_format={identity.subject_format!r}",
            details={"connection": connection, "sources": list(sources)},
        )
        return None, error, tuple(steps), raw

    profile = _profile(
        claims,
        identity,
        sub=subject.derive_sub(tenant_id, connection_id, found[0]),
        tenant=tenant,
        connection=connection,
        domains=domains,
    )
    return profile, None, tuple(steps), raw


def _one_address(email: str | None) -> bool:
    """One plain address: a single '@' between a local part and a domain name without empty labels (a final dot
    is allowed), and nothing that separates or quotes addresses (whitespace, ',', ';', '<', '>', '"')."""
    if not email or email.count("@") != 1 or any(c.isspace() or c in ',;<>"' for c in email):
        return False
    local, domain = email.split("@")
    domain = domain[:-1] if domain.endswith(".") else domain
    return bool(local) and bool(domain) and "" not in domain.split(".") and email_domain(email) is not None


def _parse_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def _profile(
    claims: ClaimSet, identity: UpstreamIdentity, *, sub: str, tenant: str, connection: str,
    domains: tuple[str, ...] = (),
) -> Profile:
    def values(name: str) -> list[str]:
        return claims.values.get(name, []) if name in claims.written else []

    def first(name: str) -> str | None:
        found = values(name)
        return found[0] if found else None

    email = first("email")
    given, family = first("given_name"), first("family_name")
    name = first("name") or (" ".join(p for p in (given, family) if p) or None)
    verified = _parse_bool(first("email_verified")) if email is not None else None
    if verified and not _one_address(email):
        verified = False  # e.g. a rule copied a UPN-ish `a@evil.example@corp.example`: no one address to vouch for
        claims.warn("email_verified is false: the email is not one plain address")
    elif verified and domains and email_domain(email) not in domains:
        verified = False
        claims.warn("email_verified is false: the email's domain is not one of this connection's domains")
    extra: dict[str, Any] = {}
    for key in claims.written:
        found = values(key)
        if key not in NORMALIZED and not key.startswith("_") and found:
            extra[key] = found[0] if len(found) == 1 else list(found)
    return Profile(
        sub=sub,
        tenant=tenant,
        connection=connection,
        idp=identity.issuer,
        email=email,
        email_verified=verified,
        name=name,
        given_name=given,
        family_name=family,
        groups=tuple(dict.fromkeys(values("groups"))),
        roles=tuple(dict.fromkeys(values("roles"))),
        amr=tuple(identity.amr),
        acr=identity.authn_context,
        extra=extra,
        warnings=tuple(dict.fromkeys((*identity.warnings, *claims.warnings))),
    )


def subject_sources(preset: str, subject_source: str | None) -> tuple[str, ...]:
    """Where a mapping takes the stable subject from, in order: its own subject_source, else the preset's."""
    if subject_source is not None:
        return (subject_source,)
    return presets.SUBJECT_SOURCES.get(preset, (subject.NAMEID,))


def transient_subject_warning(preset: str, subject_source: str | None,
                              name_id_formats: tuple[str, ...]) -> str | None:
    """SPEC: a transient NameID is never a stable subject. A warning when the mapping would take the subject
    from the NameID alone and every NameID format asked for or offered is transient: every login would be
    refused (mapping_subject_missing) until an attribute is named as the subject source."""
    formats = tuple(f for f in name_id_formats if f)
    if subject_sources(preset, subject_source) != (subject.NAMEID,) or not formats:
        return None
    if any(f != subject.TRANSIENT for f in formats):
        return None
    return ("transient_subject: this connection takes the user's subject from the NameID, but its NameID "
            "format is transient (a new value at every login, never a stable subject), so every login will "
            "be refused. Ask the IdP for a persistent or email NameID, or set mapping.subject_source to an "
            "attribute with a stable value.")
