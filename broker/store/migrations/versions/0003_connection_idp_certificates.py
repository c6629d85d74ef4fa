"""connections.idp_certificates: the expiry of each IdP signing certificate, for the expiry gauge

Filled from the metadata each SAML connection already has (inline `metadata_xml`, else the last good copy
of its `metadata_url`), so that every connection is in the gauge from the first scrape after the upgrade.

Revision ID: 0003
Revises: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

from broker.samlxml.metadata import signing_certificate_expiry

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None
BATCH = 20


def upgrade() -> None:
    with op.batch_alter_table("connections") as batch:
        batch.add_column(sa.Column("idp_certificates", sa.JSON(), nullable=True))
    connections = sa.table(
        "connections",
        sa.column("id", sa.String),
        sa.column("protocol", sa.String),
        sa.column("settings", sa.JSON),
        sa.column("fetched_metadata", sa.Text),
        sa.column("idp_certificates", sa.JSON),
    )
    bind = op.get_bind()
    ids = bind.execute(sa.select(connections.c.id).where(connections.c.protocol == "saml")).scalars().all()
    for start in range(0, len(ids), BATCH):  # documents of up to 2 MiB each: a batch at a time in memory
        rows = bind.execute(
            sa.select(connections.c.id, connections.c.settings, connections.c.fetched_metadata)
            .where(connections.c.id.in_(ids[start:start + BATCH]))
        ).all()
        for conn_id, settings, fetched in rows:
            _fill(bind, connections, conn_id, settings, fetched)


def _fill(bind: sa.Connection, connections: sa.TableClause, conn_id: str, settings: object, fetched: object) -> None:
    if isinstance(settings, str):  # JSON stored as text by some drivers
        settings = json.loads(settings)
    if not isinstance(settings, dict):
        settings = {}
    xml = settings.get("metadata_xml") or fetched
    if not isinstance(xml, str) or not xml:
        return
    certs = signing_certificate_expiry(xml.encode("utf-8"), settings.get("idp_entity_id"))
    if certs:
        bind.execute(sa.update(connections).where(connections.c.id == conn_id).values(idp_certificates=certs))


def downgrade() -> None:
    with op.batch_alter_table("connections") as batch:
        batch.drop_column("idp_certificates")
