"""apps.subject_type: public or pairwise subjects per app

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("subject_type", sa.String(length=10), nullable=False, server_default="public"))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("subject_type")
