"""config_generation: the configuration generation token in the database, for deployments without Redis

A `broker config apply` (or any other CLI write) in another process bumps it, and a running server without
Redis sees the change on its next request instead of after its cache's 10-minute backstop.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "config_generation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("config_generation")
