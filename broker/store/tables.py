"""SQLAlchemy tables for tenant configuration and audit. Private to broker/store: nothing else imports it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class TenantRow(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class AdminKeyRow(Base):
    __tablename__ = "admin_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True, index=True
    )
    key_hash: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    label: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ConnectionRow(Base):
    __tablename__ = "connections"
    __table_args__ = (UniqueConstraint("tenant_id", "slug", name="uq_connections_tenant_slug"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    slug: Mapped[str] = mapped_column(String(63), nullable=False)
    protocol: Mapped[str] = mapped_column(String(8), nullable=False)
    domains: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    restrict_to_domains: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    mapping: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    sealed_secrets: Mapped[str | None] = mapped_column(Text, nullable=True)
    sealed_sp: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # metadata_url state: the last good copy, when it was fetched, and the last refresh error
    fetched_metadata: Mapped[str | None] = mapped_column(Text, nullable=True)
    metadata_fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    metadata_next_refresh_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    metadata_last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the IdP signing certificates of the metadata in use (inline or the last good copy): SHA-256 fingerprint
    # -> notAfter (epoch seconds), kept on every metadata write for the certificate-expiry gauge
    idp_certificates: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)


class AppRow(Base):
    __tablename__ = "apps"
    # client_id is unique within a tenant only: every OAuth endpoint is the tenant's own, and a tenant admin
    # must not learn, by a conflict, which client_ids other tenants use
    __table_args__ = (UniqueConstraint("tenant_id", "client_id", name="uq_apps_tenant_client_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    client_id: Mapped[str] = mapped_column(String(100), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    public: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    allowed_scopes: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    token_endpoint_auth_method: Mapped[str] = mapped_column(String(40), nullable=False)
    id_token_signed_response_alg: Mapped[str] = mapped_column(String(10), nullable=False)
    access_token_ttl: Mapped[int] = mapped_column(Integer, nullable=False)
    id_token_ttl: Mapped[int] = mapped_column(Integer, nullable=False)
    refresh_token_ttl: Mapped[int] = mapped_column(Integer, nullable=False)
    client_secret_hash: Mapped[str | None] = mapped_column(String(128), nullable=True)
    subject_type: Mapped[str] = mapped_column(String(10), nullable=False, default="public",
                                              server_default="public")
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class SigningKeyRow(Base):
    __tablename__ = "signing_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "kid", name="uq_signing_keys_tenant_kid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    kid: Mapped[str] = mapped_column(String(100), nullable=False)
    alg: Mapped[str] = mapped_column(String(10), nullable=False)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    sealed_private: Mapped[str] = mapped_column(Text, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    activates_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_tenant_time", "tenant_id", "time"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, nullable=False)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    tenant: Mapped[str | None] = mapped_column(String(63), nullable=True)
    type: Mapped[str] = mapped_column(String(10), nullable=False)
    connection: Mapped[str | None] = mapped_column(String(63), nullable=True)
    app: Mapped[str | None] = mapped_column(String(100), nullable=True)
    outcome: Mapped[str] = mapped_column(String(10), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)


class ConfigGenerationRow(Base):
    """One row: the configuration generation token when no Redis carries it (broker.store.generation)."""

    __tablename__ = "config_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), nullable=False)
