"""admin_keys.expires_at: an admin key may expire

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: existing keys keep working until revoked, and a release before this one ignores
    # the column (an older pod restarting after the upgrade still runs)
    with op.batch_alter_table("admin_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("admin_keys") as batch:
        batch.drop_column("expires_at")
