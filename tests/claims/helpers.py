"""Small builders shared by the claims tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from broker.claims.pipeline import CompiledMapping, Explanation, apply, compile_mapping, explain
from broker.model import MappingConfig, Profile, UpstreamIdentity

PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"

WHERE = {"tenant": "acme", "tenant_id": "ten-1", "connection": "corp-idp", "connection_id": "con-1"}


def identity(
    attributes: Mapping[str, Sequence[str]] | None = None,
    *,
    subject: str = "user-1",
    subject_format: str | None = PERSISTENT,
    friendly_names: Mapping[str, str] | None = None,
    issuer: str = "https://idp.example.com",
    protocol: Any = "saml",
    **kw: Any,
) -> UpstreamIdentity:
    return UpstreamIdentity(
        protocol=protocol,
        issuer=issuer,
        subject=subject,
        subject_format=subject_format,
        attributes={k: tuple(v) for k, v in (attributes or {}).items()},
        friendly_names=dict(friendly_names or {}),
        **kw,
    )


def mapping(
    rules: Sequence[Any] = (), preset: str = "generic-saml", subject_source: str | None = None
) -> CompiledMapping:
    return compile_mapping(MappingConfig(preset=preset, rules=tuple(rules), subject_source=subject_source))


def run(rules: Sequence[Any], ident: UpstreamIdentity, preset: str = "generic-saml", **where: str) -> Profile:
    return apply(mapping(rules, preset), ident, **{**WHERE, **where})


def dry(rules: Sequence[Any], ident: UpstreamIdentity, preset: str = "generic-saml") -> Explanation:
    return explain(mapping(rules, preset), ident, **WHERE)
