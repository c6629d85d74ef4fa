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
    rows = bind.execute(
        sa.select(connections.c.id, connections.c.settings, connections.c.fetched_metadata)
        .where(connections.c.protocol == "saml")
    ).all()
    for conn_id, settings, fetched in rows:
        if isinstance(settings, str):  # JSON stored as text by some drivers
            settings = json.loads(settings)
        xml = (settings or {}).get("metadata_xml") or fetched
        if not xml:
            continue
        certs = signing_certificate_expiry(xml.encode("utf-8"), (settings or {}).get("idp_entity_id"))
        if certs:
            bind.execute(
                sa.update(connections).where(connections.c.id == conn_id).values(idp_certificates=certs)
            )


def downgrade() -> None:
    with op.batch_alter_table("connections") as batch:
        batch.drop_column("idp_certificates")
