"""signing_keys.activates_at: a staged rotation publishes a key before it signs; signing_keys.revoked_at: a
revoked key is trusted for nothing

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: existing keys sign as before, and a release before this one ignores the columns (it
    # would sign with a staged key at once and still publish a revoked one, so staged rotations and revocations
    # wait until every replica runs this release)
    with op.batch_alter_table("signing_keys") as batch:
        batch.add_column(sa.Column("activates_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("activates_at")
