"""apps.client_id: unique per tenant instead of across all tenants

Two tenants may each have an app called `portal`, and a tenant admin can no longer tell, from a conflict,
which client_ids other tenants use (SPEC: do not reveal other tenants).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# SQLite keeps the old constraint unnamed; batch mode names it by this convention so that it can be dropped.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _global_unique_name() -> str | None:
    for uc in sa.inspect(op.get_bind()).get_unique_constraints("apps"):
        if uc["column_names"] == ["client_id"]:
            return uc["name"]
    return None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("apps", naming_convention=_SQLITE_NAMES, recreate="always") as batch:
            batch.drop_constraint("uq_apps_client_id", type_="unique")
            batch.create_unique_constraint("uq_apps_tenant_client_id", ["tenant_id", "client_id"])
        return
    name = _global_unique_name()
    if name:
        op.drop_constraint(name, "apps", type_="unique")
    op.create_unique_constraint("uq_apps_tenant_client_id", "apps", ["tenant_id", "client_id"])


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_constraint("uq_apps_tenant_client_id", type_="unique")
        batch.create_unique_constraint("uq_apps_client_id", ["client_id"])
