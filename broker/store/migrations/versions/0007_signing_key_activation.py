"""signing_keys.activates_at: a staged rotation publishes a key before it signs

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
    # nullable, no default: existing keys sign as before, and a release before this one ignores the column (it
    # would sign with a staged key at once, so staged rotations wait until every replica runs this release)
    with op.batch_alter_table("signing_keys") as batch:
        batch.add_column(sa.Column("activates_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("activates_at")
